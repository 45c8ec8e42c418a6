"""The gradient-method callback: collect each task's gradient, let a method combine them.

The bi-encoder backpropagates one task at a time and marks which (``active_task``). A method
that needs task gradients moves ``p.grad`` into a per-task buffer after each backward
(``on_after_backward``) and, just before the optimizer steps (``on_before_optimizer_step``,
after AMP unscaling and before the module clips), writes the combined gradient back.
A subclass only implements :meth:`GradientMethod.combine`; the base owns buffers, the
non-finite fallback, checkpoint state and logging.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

log = logging.getLogger(__name__)


class GradientMethod(Callback):
    """Base class of every multitask gradient method (see ``multiret/mtl/*.py``)."""

    name: str = "base"
    needs_task_gradients: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.task_names: list[str] = []
        self.step = 0
        self.nonfinite_steps = 0
        self._params: list[torch.nn.Parameter] = []
        self._task_grads: list[torch.Tensor] = []
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        """One key for every method, so resuming with another method finds the state and refuses it."""
        return "GradientMethod"

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.task_names = [task.name for task in trainer.datamodule.tasks]
        if trainer.world_size > 1 and self.needs_task_gradients:
            raise RuntimeError(
                f"method={self.name} collects per-task gradients, which multiret does not yet all-reduce across "
                f"{trainer.world_size} processes; train it on one device (trainer=cpu or trainer=gpu), or use method=naive"
            )
        self._params = [p for p in pl_module.parameters() if p.requires_grad]
        if self.needs_task_gradients:
            count = len(self.task_names)
            self._task_grads = [torch.zeros((count, *p.shape), dtype=p.dtype, device=p.device) for p in self._params]
        self.setup_state(self._params, len(self.task_names))
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        """Allocate the method's own state once parameters and tasks are known (default: none)."""

    @override
    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.needs_task_gradients:
            return
        task = pl_module.active_task
        if task is None:
            raise RuntimeError(f"method={self.name} needs the module to mark the task of each backward (active_task)")
        with torch.no_grad():
            for buffer, param in zip(self._task_grads, self._params):
                if param.grad is not None:
                    buffer[task].add_(param.grad)
                    param.grad = None

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.needs_task_gradients:
            with torch.no_grad():
                if bool(torch.isfinite(torch.stack([g.sum() for g in self._task_grads])).all()):
                    combined = self.combine(self._task_grads, self._params, trainer)
                else:
                    self.nonfinite_steps += 1
                    log.warning("step %d: non-finite task gradient; applying the naive mean for this step", self.step)
                    combined = [g.mean(0) for g in self._task_grads]
                for param, grad in zip(self._params, combined):
                    param.grad = grad
                for buffer in self._task_grads:
                    buffer.zero_()
            pl_module.log("mtl/nonfinite_steps", float(self.nonfinite_steps), on_step=True, batch_size=1)
        self.step += 1

    def combine(
        self, task_grads: list[torch.Tensor], params: list[torch.nn.Parameter], trainer: L.Trainer
    ) -> list[torch.Tensor]:
        """Turn per-parameter ``(T, *shape)`` task gradients into one gradient per parameter."""
        raise NotImplementedError

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
            **self.extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = dict(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"checkpoint was trained with method={state.get('method')!r}, not method={self.name!r}")
        if list(state.get("task_names", [])) != self.task_names:
            raise ValueError(
                f"checkpoint was trained on tasks {state.get('task_names')}, but data.task_names is {self.task_names}; "
                "resume with the same task list (and order)"
            )
        self.step = int(state["step"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.load_extra_state(state)
