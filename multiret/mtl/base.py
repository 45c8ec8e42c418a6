"""The gradient-method callback: collect each task's gradient, let a method combine them.

The bi-encoder backpropagates one task at a time and names which (``active_task``, a task name
the method looks up in the data module's ``task_names``; every micro-batch must hold those
tasks in that order, :func:`multiret.data.batches.check_tasks`). A method that needs task
gradients moves ``p.grad`` into a per-task buffer after each backward
(``on_after_backward``) and, just before the optimizer steps (``on_before_optimizer_step``,
before the module clips), writes the combined gradient back.

Under fp16 mixed precision (``trainer.precision=16-mixed``) every backward is of the loss times
the GradScaler's scale, and Lightning unscales ``p.grad`` before ``on_before_optimizer_step``,
when the task gradients are already in the buffers. So the base unscales the buffers and the
task losses itself before any rule sees them (every method, through :meth:`GradientMethod.combine`
or :meth:`GradientMethod.task_coefficients`, gets what fp32 would give it), and records its own
finiteness verdict as the scaler's inf check of the optimizer: the scaler then skips a non-finite
step and lowers its scale as it would for naive (:func:`record_inf_check`).

Most methods only decide one coefficient per task from the tasks' Gram matrix
``G_ij = g_i · g_j`` (over all parameters) and their losses: they implement
:meth:`GradientMethod.task_coefficients` and the base forms ``Σ_t c_t g_t`` per parameter
tensor, so nothing is ever flattened. A method with per-parameter weights (TACO) overrides
:meth:`GradientMethod.combine`. The base owns the buffers, checkpoint state, logging and the
one guard against non-finite steps, for every method (naive included): a step whose task
losses or gradients are not finite is skipped whole (see :meth:`GradientMethod.on_before_optimizer_step`).

Under DDP every method gives the update of one process on the global batch: DDP's reducer
averages ``p.grad`` across processes after every backward, so each task buffer holds the global
task gradient, and the task losses are averaged here (:meth:`GradientMethod._collect_losses`);
every process then sees the same inputs and decides alike (tests/test_ddp_training.py).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from multiret.data.batches import check_tasks
from multiret.errors import UserError
from multiret.model.gather import world
from multiret.mtl.buffers import TaskBuffers

log = logging.getLogger(__name__)


COSINE_SETS = ("no_embeddings", "all")  # method.cosines_over: which parameters the logged norms and cosines read


def method_id(config: Any) -> str:
    """A run's method as its config names it: ``method.name`` (its conf/method file), or, for configs logged before
    every method YAML set a name, its class's name."""
    method = config.get("method") or {}
    return str(method.get("name") or str(method.get("_target_", "unknown")).rsplit(".", 1)[-1])


def gram_matrix(task_grads: list[torch.Tensor]) -> torch.Tensor:
    """``G_ij = g_i · g_j`` over every parameter tensor, from per-tensor ``(T, *shape)`` gradients (float64)."""
    num_tasks = task_grads[0].shape[0]
    gram = torch.zeros((num_tasks, num_tasks), dtype=torch.float64, device=task_grads[0].device)
    for grads in task_grads:
        flat = grads.reshape(num_tasks, -1)
        gram += (flat @ flat.T).double()
    return gram


def loss_scaler(trainer: L.Trainer) -> torch.amp.GradScaler | None:
    """The trainer's enabled GradScaler (fp16 mixed precision), or None."""
    scaler = getattr(trainer, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def record_inf_check(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, finite: bool,
                     device: torch.device) -> None:
    """Make ``finite`` the scaler's inf check of ``optimizer`` for this step, on every device it checked.

    Lightning's ``scaler.unscale_`` ran before the method wrote ``p.grad``, so it checked only
    the gradients the method left there (none, when every parameter is buffered: then
    ``scaler.step`` raises "No inf checks were recorded"). The method's verdict covers those
    and the task gradients. GradScaler has no public call to record a check after ``unscale_``;
    ``_found_inf_per_device`` is the dict its ``step`` and ``update`` read.
    """
    found = scaler._found_inf_per_device(optimizer)
    for where in {*found, device}:
        found[where] = torch.full((), 0.0 if finite else 1.0, dtype=torch.float32, device=where)


def weighted_sum(task_grads: list[torch.Tensor], coefficients: torch.Tensor) -> list[torch.Tensor]:
    """``Σ_t c_t g_t`` for every parameter tensor."""
    coefficients = coefficients.to(device=task_grads[0].device, dtype=task_grads[0].dtype)
    return [torch.tensordot(coefficients, g, dims=1) for g in task_grads]


class NonFiniteTrainingError(UserError, RuntimeError):
    """Training stopped: too many steps in a row had a non-finite loss or gradient (every one of them was skipped).

    A :class:`UserError`, so the command line prints its message (which names the fix) as one line.
    """


class GradientMethod(Callback):
    """Base class of every multitask gradient method (see ``multiret/mtl/*.py``).

    ``log_every_n_steps`` sets how often per-task gradient norms and pairwise cosines are
    logged. A step whose task losses or gradients are not finite is skipped (no update at all);
    ``max_nonfinite_steps`` such steps in a row stop training. Under fp16 loss scaling, a step
    whose losses are finite but whose gradients overflow is the scaler's to handle (it lowers
    its scale): it is skipped and counted, but does not count towards that limit.
    ``parameters`` (regular expressions over parameter names, as the TACO reference's
    ``select_blocks``) restricts the method to the matching parameters: only they are buffered
    per task and combined by the rule; every other parameter gets the plain mean of its task
    gradients ``Σ_t g_t / T``, with no per-task memory. Embedding tables of at least
    ``row_tracked_tables_from`` entries are buffered per task at the rows a batch touched
    (:class:`~multiret.mtl.buffers.TaskBuffers`); a smaller table (T5's relative-position
    biases) is copied whole like any parameter, since finding and moving its rows takes about
    ten small operations per backward, more than copying it.

    ``name`` is the method's id, the name of its ``conf/method/`` file (every YAML sets it, and
    ``tests/test_configs.py`` checks the two agree): the checkpoint records it, a resume checks
    it, and the logs use it. A method built in Python without one gets its class's ``name``.
    """

    name: str = "base"
    needs_task_gradients: bool = True

    def __init__(
        self,
        name: str | None = None,
        log_every_n_steps: int = 10,
        max_nonfinite_steps: int = 5,
        parameters: Sequence[str] | None = None,
        row_tracked_tables_from: int = 1 << 16,
        cosines_over: str = "no_embeddings",
        same_task_cosine: bool = True,
    ) -> None:
        super().__init__()
        if name is not None:
            self.name = name
        if log_every_n_steps < 1 or max_nonfinite_steps < 1:
            raise ValueError("method.log_every_n_steps and method.max_nonfinite_steps must be ≥ 1")
        if cosines_over not in COSINE_SETS:
            raise UserError(f"method.cosines_over={cosines_over!r}; choose one of {list(COSINE_SETS)}")
        self.cosines_over = cosines_over
        self.same_task_cosine = same_task_cosine
        self.row_tracked_tables_from = row_tracked_tables_from
        self.parameter_patterns = [re.compile(p) for p in parameters] if parameters else None
        self.log_every_n_steps = log_every_n_steps
        self.max_nonfinite_steps = max_nonfinite_steps
        self.task_names: list[str] = []
        self.step = 0
        self.nonfinite_steps = 0  # steps skipped so far (checkpointed, logged as mtl/nonfinite_steps)
        self.nonfinite_streak = 0  # of them, how many in a row up to this step
        self._nonfinite_culprit = ""  # what the last skipped step found not finite, for the stop message
        self._skipped_last_update = False
        self.task_losses = torch.zeros(0)
        self._device_losses = torch.zeros(0)  # this step's task losses, summed on the parameters' device
        self._params: list[torch.nn.Parameter] = []
        self._plain_params: list[torch.nn.Parameter] = []
        self.buffers: TaskBuffers | None = None  # the task gradients, for a method that needs them
        self.row_sparse: list[bool] = []  # per parameter in _params: an embedding table buffered by rows
        self._gram: torch.Tensor | None = None
        self._diagnostic_gram: torch.Tensor | None = None  # the Gram matrix over the parameters the cosines read
        self.in_diagnostics: list[bool] = []  # per parameter in _params: read by the logged norms and cosines
        self._previous: list[torch.Tensor] | None = None  # the task gradients of the step before a logging step
        self._pending_state: dict[str, Any] | None = None

    @property
    def skipped_last_update(self) -> bool:
        """Whether this step's optimizer step updated nothing (the module reads it: :class:`multiret.model.biencoder.UpdateGuard`)."""
        return self._skipped_last_update

    @property
    def state_key(self) -> str:
        """One key for every method, so resuming with another method finds the state and refuses it."""
        return "GradientMethod"

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.task_names = list(trainer.datamodule.task_names)
        self._params, self._plain_params = self._select(pl_module)
        tables = {id(m.weight) for m in pl_module.modules() if isinstance(m, torch.nn.Embedding)}
        self.row_sparse = [id(p) in tables and p.numel() >= self.row_tracked_tables_from for p in self._params]
        embeddings = {id(p) for m in pl_module.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
        self.in_diagnostics = [self.cosines_over == "all" or id(p) not in embeddings for p in self._params]
        if not any(self.in_diagnostics):  # a model of embeddings alone: its cosines can only read them
            self.in_diagnostics = [True] * len(self._params)
        count = len(self.task_names)
        if self.needs_task_gradients:
            self.buffers = TaskBuffers(self._params, self.row_sparse, count)
        self.task_losses = torch.zeros(count, dtype=torch.float64)
        self._device_losses = torch.zeros(count, device=self._params[0].device if self._params else "cpu")
        self.setup_state(self._params, count)
        if self._pending_state is not None:
            self._restore(self._pending_state, f"checkpoint {trainer.ckpt_path}" if trainer.ckpt_path else "the checkpoint")
            self._pending_state = None

    def _select(self, module: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """Split trainable parameters into those the method combines and those that get the plain mean."""
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        if self.parameter_patterns is None or not self.needs_task_gradients:
            return [p for _, p in named], []
        chosen = [any(rx.search(name) for rx in self.parameter_patterns) for name, _ in named]
        if not any(chosen):
            examples = ", ".join(name for name, _ in named[:3])
            raise ValueError(
                f"method.parameters {[rx.pattern for rx in self.parameter_patterns]} matches no trainable parameter; "
                f"names look like: {examples}"
            )
        return [p for (_, p), c in zip(named, chosen) if c], [p for (_, p), c in zip(named, chosen) if not c]

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        """Allocate the method's own state once parameters and tasks are known (default: none)."""

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        """Check the step's tasks against the declared ones before any backward; no update is skipped yet."""
        for micro_batch in batch:
            check_tasks(micro_batch, self.task_names)
        self._skipped_last_update = False

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        task = self._active_task(pl_module)
        self._device_losses[task] += loss.detach().float()  # stays on the device: no sync per backward

    @override
    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Move the backward's gradients into the task's buffers."""
        if self.buffers is not None:
            self.buffers.take(self._active_task(pl_module))

    def _active_task(self, pl_module: L.LightningModule) -> int:
        """The position in ``task_names`` of the task the module names as running its backward."""
        task = getattr(pl_module, "active_task", None)
        if task is None:
            raise RuntimeError(f"method={self.name} needs the module to name the task of each backward (active_task)")
        if task not in self.task_names:
            raise UserError(f"the module ran a backward of task {task!r}, which is not in data.task_names={self.task_names}; "
                            "train on the data module's own batches")
        return self.task_names.index(task)

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Write the combined gradient into ``p.grad``; or, if the step is not finite, skip its update whole.

        A step is skipped when a task loss, a task gradient, or a gradient summed in ``p.grad``
        (naive's, and the parameters outside ``method.parameters``) is not finite. Then every
        ``p.grad`` is dropped, so the optimizer's step changes neither the weights nor its own
        state (AdamW's moments and step count); no method state moves (the check comes before
        :meth:`task_coefficients`, and :meth:`combine` changes nothing when it returns None); the
        module leaves the learning-rate schedule where it was (:attr:`skipped_last_update`); the step is
        counted and logged (``mtl/nonfinite_steps``), and ``max_nonfinite_steps`` in a row stop
        training.
        """
        scaler = loss_scaler(trainer)
        unscale = 1.0 / scaler.get_scale() if scaler is not None else 1.0  # p.grad outside the buffers: unscaled
        self._collect_losses(unscale)
        self._device_losses.zero_()
        log_now = self.step % self.log_every_n_steps == 0
        snapshot = self.same_task_cosine and (self.step + 1) % self.log_every_n_steps == 0
        device = self._params[0].device if self._params else torch.device("cpu")
        # the optimizer steps inside training_step, so under bf16-mixed autocast is on here: the rules run in the
        # buffers' precision, not in bf16 (nor may a bf16 result become the float32 parameters' gradient)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            if self.buffers is not None:
                self.buffers.complete()
                if scaler is not None:
                    self.buffers.scale_(unscale)
            losses_finite = bool(torch.isfinite(self.task_losses).all())
            finite = losses_finite and self._summed_gradients_finite()
            logged: dict[str, float] = {}
            if finite and self.needs_task_gradients:
                statistics = self._write_combined(trainer, log_now, snapshot)
                finite = statistics is not None
                logged = statistics or {}
            if finite:
                self.nonfinite_streak = 0
            else:
                self._skip_update(overflow=scaler is not None and losses_finite)
                self._previous = None
            if self.buffers is not None:
                self.buffers.reset()
                self._gram = self._diagnostic_gram = None
        if scaler is not None:
            record_inf_check(scaler, optimizer, finite, device)
        self._skipped_last_update = not finite
        if log_now or not finite:
            logged["mtl/nonfinite_steps"] = float(self.nonfinite_steps)
        if logged:
            self._log(trainer, pl_module, logged)
        self.step += 1
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            raise self._stop_error()

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, values: dict[str, float]) -> None:
        """Write ``values`` to every logger under this step, and to the trainer's metrics.

        Lightning writes a step's ``self.log`` values only every ``trainer.log_every_n_steps``
        batches, which would drop the method's steps that fall between (half of them at a
        method interval of 5 and a trainer interval of 10); so the base writes them itself, as
        :class:`~multiret.eval.dev_validation.DevValidation` does, and ``log_dict`` only keeps
        them in ``callback_metrics`` for the progress line.
        """
        pl_module.log_dict(values, on_step=True, batch_size=1, logger=False)
        if getattr(trainer, "is_global_zero", True):
            for logger in getattr(trainer, "loggers", ()):
                logger.log_metrics(values, step=getattr(trainer, "global_step", self.step))

    def _stop_error(self) -> NonFiniteTrainingError:
        """Why training stops after ``max_nonfinite_steps`` skipped steps in a row, and how to fix it."""
        last_update = self.step - self.nonfinite_streak - 1
        weights = f"those after step {last_update}" if last_update >= 0 else "the initial ones"
        return NonFiniteTrainingError(
            f"training stopped at step {self.step - 1}: {self.nonfinite_streak} steps in a row had a non-finite "
            f"{self._nonfinite_culprit}; their updates were skipped, so the weights are still finite ({weights}). "
            "Lower optimizer.lr, check the data, or train in fp32 (trainer.precision=32-true); "
            f"method.max_nonfinite_steps={self.max_nonfinite_steps} sets how many skipped steps in a row are tolerated"
        )

    def _write_combined(self, trainer: L.Trainer, log_now: bool, snapshot: bool = False) -> dict[str, float] | None:
        """Put the combined task gradients into ``p.grad`` (the plain mean for parameters the method leaves out);
        returns what to log, or None, having changed nothing, if the task gradients are not finite.

        ``snapshot``: keep this step's task gradients for the next (logging) step's same-task cosines."""
        baseline: dict[str, float] = {}
        if log_now:  # before combine, which may write its result over the task buffers
            self.gram()
            baseline = self._same_task_cosines()
        if snapshot:
            self._previous = [g.clone() for g, keep in zip(self.buffers.grads, self.in_diagnostics) if keep]
        combined = self.combine(self.buffers.grads, self._params, trainer)
        if combined is None:
            return None
        for param, grad in zip(self._params, combined):
            param.grad = grad
        for param in self._plain_params:
            if param.grad is not None:
                param.grad.div_(len(self.task_names))
        if not log_now:
            return {}
        return {**self._gradient_statistics(self._diagnostic_gram), **baseline, **self.log_values()}

    def _summed_gradients_finite(self) -> bool:
        """Whether the gradients the backwards left in ``p.grad`` are finite: every gradient for a method without
        task buffers (naive), the parameters outside ``method.parameters`` for the others.

        One fused pass of per-tensor 2-norms; a norm that overflows (entries above ~1e19) counts
        as non-finite too, as the Gram matrix's check of the task gradients does.
        """
        params = self._plain_params if self.needs_task_gradients else self._params
        grads = [p.grad for p in params if p.grad is not None]
        return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).max()))

    def _skip_update(self, overflow: bool = False) -> None:
        """Drop every gradient of this step, so the optimizer moves nothing; count the step and say why.

        ``overflow``: the loss-scaled gradients overflowed with finite losses, which the scaler
        answers by lowering its scale; such a step does not count towards ``max_nonfinite_steps``.
        """
        self._nonfinite_culprit = self._describe_nonfinite()
        for param in (*self._params, *self._plain_params):
            param.grad = None
        self.nonfinite_steps += 1
        if overflow:
            log.info("step %d: non-finite %s under fp16 loss scaling; the step's update is skipped and the scaler "
                     "lowers its scale (%d skipped so far)", self.step, self._nonfinite_culprit, self.nonfinite_steps)
            return
        self.nonfinite_streak += 1
        log.warning(
            "step %d: non-finite %s; the step's update is skipped (%d skipped so far, %d in a row; %d in a row stop "
            "training)", self.step, self._nonfinite_culprit, self.nonfinite_steps, self.nonfinite_streak,
            self.max_nonfinite_steps,
        )

    def _describe_nonfinite(self) -> str:
        """What was not finite this step, naming the tasks where that can be told (runs only on a skipped step)."""
        losses = [name for name, v in zip(self.task_names, self.task_losses.tolist()) if not math.isfinite(v)]
        if losses:
            return f"loss of task(s) {losses}"
        if self.needs_task_gradients:
            grads = [name for task, name in enumerate(self.task_names)
                     if not all(bool(torch.isfinite(buffer[task]).all()) for buffer in self.buffers.grads)]
            if grads:
                return f"gradient of task(s) {grads}"
        return "gradient (summed over the tasks)"

    def _collect_losses(self, unscale: float = 1.0) -> None:
        """This step's task losses on the CPU, times ``unscale`` (the inverse of an fp16 loss scale: the backwards
        saw the scaled losses); under DDP the mean over processes (the module docstring says why)."""
        losses = self._device_losses.clone()
        _, size = world()
        if size > 1:
            dist.all_reduce(losses)
            losses /= size
        self.task_losses = losses.double().cpu() * unscale

    def _gradient_statistics(self, gram: torch.Tensor) -> dict[str, float]:
        """Per-task gradient norms and pairwise cosines: the conflicts multitask methods exist to resolve.

        Both read the parameters of ``method.cosines_over``: by default every one but the
        embedding tables, whose rows a task's batch touches sparsely (its own words, prompts and
        positions), so the tasks' gradients there are nearly disjoint and pull every cosine
        towards 0 whatever the encoder's layers do."""
        norms = gram.diagonal().clamp(min=0).sqrt()
        stats = {f"mtl/grad_norm/{name}": float(n) for name, n in zip(self.task_names, norms)}
        for i in range(len(self.task_names)):
            for j in range(i + 1, len(self.task_names)):
                cosine = gram[i, j] / (norms[i] * norms[j]).clamp(min=1e-30)
                stats[f"mtl/cosine/{self.task_names[i]}~{self.task_names[j]}"] = float(cosine)
        return stats

    def _same_task_cosines(self) -> dict[str, float]:
        """Each task's gradient now against its own on the step before (another batch, one update earlier), over
        the parameters of the cosines: the reference that says how far from 1 two gradients of one task fall, so
        that a cross-task cosine near 0 can be read (none when the step before was skipped or not seen, as after a
        resume)."""
        previous, self._previous = self._previous, None
        if previous is None:
            return {}
        current = [g for g, keep in zip(self.buffers.grads, self.in_diagnostics) if keep]
        dots = sum((a.reshape(len(a), -1).double() * b.reshape(len(b), -1).double()).sum(1) for a, b in zip(previous, current))
        before = sum(a.reshape(len(a), -1).double().square().sum(1) for a in previous).sqrt()
        now = self._diagnostic_gram.diagonal().clamp(min=0).sqrt().to(dots.device)
        cosines = (dots / (before * now).clamp(min=1e-30)).cpu()
        return {f"mtl/cosine_same_task/{name}": float(c) for name, c in zip(self.task_names, cosines)}

    def gram(self) -> torch.Tensor:
        """This step's Gram matrix of the buffered task gradients, on the CPU, computed once per step (with the part
        over the parameters the logged cosines read, at no extra pass)."""
        if self._gram is None:
            read = [g for g, keep in zip(self.buffers.grads, self.in_diagnostics) if keep]
            rest = [g for g, keep in zip(self.buffers.grads, self.in_diagnostics) if not keep]
            self._diagnostic_gram = gram_matrix(read).cpu()
            self._gram = self._diagnostic_gram + gram_matrix(rest).cpu() if rest else self._diagnostic_gram
        return self._gram

    def combine(
        self, task_grads: list[torch.Tensor], params: list[torch.nn.Parameter], trainer: L.Trainer
    ) -> list[torch.Tensor] | None:
        """Turn per-parameter ``(T, *shape)`` task gradients into one gradient per parameter.

        Returns None, changing no state, when the task gradients are not finite; the caller then
        skips the step's update. (A non-finite entry makes the Gram matrix non-finite, so the
        check costs no extra pass.) It is only called with finite task losses. A method may write its result over the
        task buffers (TACO does, to save a P-sized output): they are refilled every step, and
        nothing reads them after ``combine`` in the same step.
        """
        own = self.buffers is not None and task_grads is self.buffers.grads
        gram = self.gram() if own else gram_matrix(task_grads).cpu()
        if not bool(torch.isfinite(gram).all()):
            return None
        return weighted_sum(task_grads, self.task_coefficients(gram, self.task_losses.clone()))

    def task_coefficients(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """One coefficient per task from the CPU float64 Gram matrix ``(T, T)`` and the task losses ``(T,)``."""
        raise NotImplementedError(f"method {self.name} must implement task_coefficients() or combine()")

    def log_values(self) -> dict[str, float]:
        """Method-specific values to log (task weights, conflict counts); default none."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """The method's own tensors and numbers to checkpoint (default: none)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "task_names": list(self.task_names),
            "step": self.step,
            "nonfinite_steps": self.nonfinite_steps,
            "nonfinite_streak": self.nonfinite_streak,
            **self.extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore now if the method is set up, else once ``on_fit_start`` has built its state."""
        if self.task_names:
            self._restore(dict(state_dict))
        else:
            self._pending_state = dict(state_dict)

    def _restore(self, state: dict[str, Any], where: str = "the checkpoint") -> None:
        """Refuse a checkpoint of another method or task list (its state means nothing here), naming both fixes."""
        fresh = "or start a fresh run folder (resume=false, no ckpt_path) to train this one from the start"
        recorded = state.get("method")
        if recorded != self.name:
            # before every conf/method YAML set its name, a YAML without one (taco_published) recorded its class's
            legacy = (f" (a checkpoint written before methods were named by their conf/method file records method={self.name} "
                      f"as {recorded!r} too: resume such a run with method={recorded} and this method's settings)"
                      if recorded == type(self).name else "")
            raise UserError(f"cannot resume from {where}: it was trained with method={recorded!r}, "
                            f"not method={self.name!r}{legacy}; resume with method={recorded}, {fresh}")
        if list(state.get("task_names", [])) != self.task_names:
            raise UserError(f"cannot resume from {where}: it was trained on tasks {state.get('task_names')}, but data.task_names "
                            f"is {self.task_names}; resume with the same task list in the same order, {fresh}")
        self.step = int(state["step"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))  # checkpoints from before the streak was saved
        self.load_extra_state(state)
