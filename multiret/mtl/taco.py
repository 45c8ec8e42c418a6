"""TACO: per-parameter task weights from an EMA of task importance (Zhang et al., TACL 2023).

For task t and parameter j the instantaneous importance is the first-order Taylor
sensitivity ``I_tj = |θ_j · g_tj|``, divided by its median over all parameters when
``normalize``; an EMA ``Ī`` of it (β, updated every step, warm-up included) gives scores
``Ī / τ``, and a softmax over tasks gives weights ``α_tj``. The update is ``Σ_t g_t / T``
during warm-up and ``Σ_t α_t ⊙ g_t / T`` after (``docs/taco.md`` holds the exact rule).

``ema_dtype: bfloat16`` halves the EMA's memory (updates stochastically rounded);
``parameters`` restricts the rule to some parameter groups. The median is ``torch.median``'s:
the lower middle value for an even count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from multiret.mtl.base import GradientMethod, task_tensors

log = logging.getLogger(__name__)

EPS = 1e-12


def taco_combine(
    task_grads: torch.Tensor,
    params: torch.Tensor,
    ema: torch.Tensor,
    *,
    beta: float,
    tau: float,
    in_warmup: bool,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One TACO step on flat tensors: ``task_grads`` (T, P), ``params`` (P,), ``ema`` (T, P).

    Returns ``(combined (P,), new_ema (T, P))`` without modifying the inputs (a fixed contract).
    """
    num_tasks = task_grads.shape[0]
    importance = (params.unsqueeze(0) * task_grads).abs()
    if normalize:
        importance = importance / (importance.median(dim=-1, keepdim=True).values + EPS)
    new_ema = beta * ema + (1.0 - beta) * importance
    if in_warmup:
        return task_grads.sum(0) / num_tasks, new_ema
    if normalize:
        scores = new_ema / tau
    else:
        scores = new_ema / (new_ema.median(dim=-1, keepdim=True).values + EPS) / tau
    weights = torch.softmax(scores, dim=0)
    return (weights * task_grads).sum(0) / num_tasks, new_ema


def touched_rows(grads: torch.Tensor) -> torch.Tensor:
    """Indices of the rows (first dimension after the task one) where any task's gradient is non-zero."""
    touched = torch.zeros(grads.shape[1], dtype=torch.bool, device=grads.device)
    for task_rows in grads.reshape(grads.shape[0], grads.shape[1], -1):
        touched |= (task_rows.amax(dim=1) > 0) | (task_rows.amin(dim=1) < 0)
    return touched.nonzero().squeeze(1)


MIN_EXPONENT = -40.0  # exp(-40) ≈ 4.2e-18


def softmax_weighted_sum(ema: torch.Tensor, grads: torch.Tensor, tau: float, out: torch.Tensor) -> None:
    """``out = Σ_t softmax_t(Ī_t / τ) g_t`` for one block, written as ``Σ_t e_t g_t / Σ_t e_t`` with
    ``e_t = exp((Ī_t − max_u Ī_u) / τ)``: the same weights, with a few passes fewer than softmax then product.

    Exponents below ``MIN_EXPONENT`` are raised to it: such a weight is below 5e-18 of the
    largest one either way (far under float32 resolution), while on a CPU the exp of very
    negative inputs, and products that fall into denormal numbers, are tens of times slower
    (median-normalised scores reach thousands when a task's median importance is 0).
    """
    top = ema[0] if len(ema) == 1 else torch.maximum(ema[0], ema[1])
    for row in ema[2:]:
        torch.maximum(top, row, out=top)
    exps = torch.sub(ema, top).mul_(1.0 / tau).clamp_(min=MIN_EXPONENT).exp_()
    torch.mul(exps[0], grads[0], out=out)
    total = exps[0] if len(exps) == 1 else torch.add(exps[0], exps[1])
    for task in range(1, len(exps)):
        out.addcmul_(exps[task], grads[task])
        if task > 1:
            total.add_(exps[task])
    out.div_(total)


COUNT_ZEROS_ABOVE = 1 << 22  # parameters from which counting zeros (to skip a median of 0) pays for itself
BLOCK = 1 << 16  # elements per fused block: a block's T-row temporaries stay in the CPU cache


def blocks(size: int) -> range:
    """Start offsets of the fused blocks of a flat tensor."""
    return range(0, size, BLOCK)


def table_segment(
    theta: torch.Tensor, grads: torch.Tensor, ema: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A table's segment for the rule: its touched rows, or the whole table as one flat segment when
    most rows are touched (then gathering and scattering rows would cost more than it saves)."""
    index = touched_rows(grads)
    if 2 * index.numel() > grads.shape[1]:
        return theta.reshape(-1), grads.reshape(grads.shape[0], -1), ema.view(ema.shape[0], -1), None
    return theta, grads, ema, index


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[:, index]`` flattened to ``(T, n)``, one task at a time (each task's table is contiguous, the stack is not)."""
    return torch.stack([task_values.index_select(0, index).reshape(-1) for task_values in values])


def decay_(ema: torch.Tensor, beta: float, generator: torch.Generator | None) -> None:
    """``Ī ← β Ī`` in place (stochastically rounded for a bf16 EMA)."""
    if ema.dtype == torch.bfloat16:
        ema.copy_(stochastic_round_bf16(ema.float().mul_(beta), generator))
    else:
        ema.mul_(beta)


EMA_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def stochastic_round_bf16(values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """float32 → bfloat16, rounding away from zero with probability equal to the discarded fraction.

    Unbiased, so a bf16 EMA with β = 0.999 still moves: with round-to-nearest, an update of
    (1 − β)·I below half a bf16 step (2⁻⁹ relative) would be lost every time.
    """
    noise = torch.randint(0, 1 << 16, values.shape, dtype=torch.int32, device=values.device, generator=generator)
    return ((values.view(torch.int32) + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def task_medians(rows: Callable[[int, torch.Tensor, torch.Tensor], None], sizes: list[int], num_tasks: int,
                 like: torch.Tensor) -> torch.Tensor:
    """Median over all parameters of each task's row; ``rows(task, index, out)`` fills one tensor's slice.

    One P-sized buffer is reused for every task, so no full (T, P) copy is made.
    """
    buffer = torch.empty(sum(sizes), dtype=like.dtype, device=like.device)
    medians = torch.empty(num_tasks, dtype=like.dtype, device=like.device)
    for task in range(num_tasks):
        offset = 0
        for index, size in enumerate(sizes):
            rows(task, index, buffer[offset : offset + size])
            offset += size
        medians[task] = buffer.median()
    return medians


class TACO(GradientMethod):
    """The TACO rule applied per parameter tensor; equals :func:`taco_combine` on the flattened model."""

    name = "taco"

    def __init__(
        self,
        beta: float = 0.999,
        tau: float = 2.0,
        normalize: bool = True,
        warmup_ratio: float = 0.0,
        ema_dtype: str = "float32",
        seed: int = 0,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if ema_dtype not in EMA_DTYPES:
            raise ValueError(f"method.ema_dtype={ema_dtype!r}; choose one of {sorted(EMA_DTYPES)}")
        self.ema_dtype = EMA_DTYPES[ema_dtype]
        self.seed = seed
        self.generator: torch.Generator | None = None
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"method.beta must be in [0, 1), got {beta}")
        if tau <= 0:
            raise ValueError(f"method.tau must be > 0, got {tau}")
        if not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"method.warmup_ratio must be in [0, 1], got {warmup_ratio}")
        self.beta = beta
        self.tau = tau
        self.normalize = normalize
        self.warmup_ratio = warmup_ratio
        self.ema: list[torch.Tensor] = []
        self._flat_ema: torch.Tensor | None = None
        self._zero_median_warned: set[str] = set()

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        self._flat_ema, self.ema = task_tensors(params, self.row_sparse, num_tasks, self.ema_dtype)
        device = params[0].device if params else torch.device("cpu")
        self.generator = torch.Generator(device=device).manual_seed(self.seed)

    def warmup_steps(self, max_steps: int) -> int:
        return int(self.warmup_ratio * max_steps)

    def combine(
        self, task_grads: list[torch.Tensor], params: list[torch.nn.Parameter], trainer: L.Trainer
    ) -> list[torch.Tensor] | None:
        """The rule over one flat block of all non-table parameters plus the touched rows of each table."""
        in_warmup = self.step < self.warmup_steps(trainer.max_steps)
        if self._flat_ema is None or self._flat_task_grads is None or task_grads is not self._task_grads:
            return self.apply_rule(task_grads, params, in_warmup, self.row_sparse)
        dense = [p for p, sparse in zip(params, self.row_sparse) if not sparse]
        size = sum(p.numel() for p in dense)
        segments = []
        if size:
            theta = torch.cat([p.detach().reshape(-1) for p in dense])
            segments.append((theta, self._flat_task_grads[:, :size], self._flat_ema[:, :size], None))
        tables = [table_segment(p.detach(), g, e) for p, g, e, sparse in zip(params, task_grads, self.ema, self.row_sparse)
                  if sparse]
        outputs = self._rule(segments + tables, in_warmup)
        if outputs is None:
            return None
        flat, table_outputs = (outputs[0], iter(outputs[1:])) if size else (None, iter(outputs))
        combined, offset = [], 0
        for param, sparse in zip(params, self.row_sparse):
            if sparse:
                combined.append(next(table_outputs).view(param.shape))
            else:
                combined.append(flat[offset : offset + param.numel()].view(param.shape))
                offset += param.numel()
        return combined

    def apply_rule(
        self, task_grads: list[torch.Tensor], params: list[torch.Tensor], in_warmup: bool,
        row_sparse: list[bool] | None = None,
    ) -> list[torch.Tensor] | None:
        """Update the EMA (``self.ema``, per tensor) in place and return each tensor's combined gradient.

        Returns None, with the EMA untouched, when an importance is not finite (a non-finite
        task gradient, or a product that overflows).
        """
        num_tasks = task_grads[0].shape[0]
        segments = [
            table_segment(p.detach(), g, e) if sparse else
            (p.detach().reshape(-1), g.reshape(num_tasks, -1), e.view(num_tasks, -1), None)
            for p, g, e, sparse in zip(params, task_grads, self.ema, row_sparse or [False] * len(params))
        ]
        outputs = self._rule(segments, in_warmup)
        return None if outputs is None else [out.view(p.shape) for out, p in zip(outputs, params)]

    def _rule(self, segments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
              in_warmup: bool) -> list[torch.Tensor] | None:
        """The TACO step over ``(θ, g, Ī, rows)`` segments: flat ``θ (n)``, ``g``/``Ī (T, n)`` with ``rows`` None,
        or a table ``θ (V, …)``, ``g``/``Ī (T, V, …)`` and the indices of its touched rows.

        Two passes. The first finds each task's median importance (it needs every parameter).
        The second works block by block, so that importance, EMA update, softmax and weighted
        sum of a block are computed while it is in cache: memory traffic is what the rule
        costs on a CPU. Of a table only the touched rows are worked on: elsewhere every task
        gradient is exactly zero, so the importance is zero (counted into the median, never
        written), the EMA only decays, and the combined gradient is zero — the dense rule's
        result at the cost of the touched rows.
        """
        num_tasks = segments[0][1].shape[0]
        parts = [
            (theta, grads) if index is None else
            (theta.index_select(0, index).reshape(-1), gather_rows(grads, index))
            for theta, grads, _, index in segments
        ]
        weights = self._ema_weights(parts, sum(theta.numel() for theta, _, _, _ in segments))
        if weights is None:
            return None
        fused = self.normalize and not in_warmup
        outputs, updated = [], []
        for (theta, grads, ema, index), (theta_rows, grads_rows) in zip(segments, parts):
            if index is None:
                ema_rows = ema
            else:
                decay_(ema, self.beta, self.generator)  # untouched rows only decay; touched ones are updated below
                ema_rows = gather_rows(ema, index)
            out = torch.empty_like(theta_rows) if fused else None
            for start in blocks(theta_rows.numel()):
                end = start + BLOCK
                block = self._update_block(theta_rows[start:end], grads_rows[:, start:end], ema_rows[:, start:end],
                                           weights, decay=index is None)
                if out is not None:
                    softmax_weighted_sum(block, grads_rows[:, start:end], self.tau, out[start:end])
            if index is not None:
                for task_ema, task_rows in zip(ema, ema_rows):
                    task_ema.index_copy_(0, index, task_rows.view(index.numel(), *ema.shape[2:]))
            if out is not None:
                outputs.append(self._place(out.div_(num_tasks), theta, index))
            updated.append(ema_rows)
        if in_warmup:
            return [grads.sum(0).div_(num_tasks) for _, grads, _, _ in segments]
        if fused:
            return outputs
        scale = self._ema_scale()
        return [self._place(self._weighted(ema_rows, grads_rows, scale), theta, index)
                for (theta, _, _, index), (_, grads_rows), ema_rows in zip(segments, parts, updated)]

    def _ema_weights(self, parts: list[tuple[torch.Tensor, torch.Tensor]], total: int) -> torch.Tensor | None:
        """From flat ``(θ, g (T, n))`` pairs of ``total`` parameters in all: per task, the factor of its importance in the EMA update: ``(1 − β) / (median_j I_tj + eps)`` if normalising.

        None if any importance is not finite (checked on the same pass that counts zeros).

        Importances are ≥ 0, so zeros sort first: when the zeros (untouched rows included) fill
        the middle position the median is 0 with no selection — MiniLM's word embeddings are half
        its parameters and most rows get no gradient. Otherwise the importances are written
        into one reused P-vector, zero-padded for the untouched rows, and ``torch.median`` runs.
        Below ``COUNT_ZEROS_ABOVE`` parameters the median is always taken, for all tasks at once
        (:meth:`_small_model_weights`: cheap there, and counting would cost about as much).
        """
        num_tasks = parts[0][1].shape[0]
        dtype = self._compute_dtype()
        device = self.ema[0].device
        weights = torch.full((num_tasks,), 1.0 - self.beta, dtype=torch.float64)
        if self.normalize and total <= COUNT_ZEROS_ABOVE:
            return self._small_model_weights(parts, total, weights)
        middle = (total - 1) // 2  # torch.median's (lower) middle position
        zeros = torch.full((num_tasks,), total, dtype=torch.int64, device=device)
        checksum = torch.zeros((), dtype=torch.float64, device=device)
        for theta, grads in parts:
            for start in blocks(theta.numel()):
                importance = theta[start : start + BLOCK] * grads[:, start : start + BLOCK]
                checksum += importance.sum()
                if self.normalize:
                    zeros -= torch.count_nonzero(importance, dim=1)
        if not bool(torch.isfinite(checksum)):
            return None
        if not self.normalize:
            return weights.to(device=device, dtype=dtype)
        buffer: torch.Tensor | None = None
        for task, task_zeros in enumerate(zeros.tolist()):
            if middle < task_zeros:
                median, zero_share = 0.0, task_zeros / total
            else:
                if buffer is None:
                    buffer = torch.zeros(total, dtype=dtype, device=device)
                offset = 0
                for theta, grads in parts:
                    torch.mul(theta, grads[task], out=buffer[offset : offset + theta.numel()]).abs_()
                    offset += theta.numel()
                median = float(buffer.median())
                zero_share = 1.0 - float(torch.count_nonzero(buffer)) / total if median == 0.0 else 0.0
            if median == 0.0:
                self._warn_zero_median(task, zero_share)
            weights[task] /= median + EPS
        return weights.to(device=device, dtype=dtype)

    def _small_model_weights(self, parts: list[tuple[torch.Tensor, torch.Tensor]], total: int,
                             weights: torch.Tensor) -> torch.Tensor | None:
        """:meth:`_ema_weights` below ``COUNT_ZEROS_ABOVE`` parameters: every task's importances in one
        ``(T, P)`` tensor (zero-padded for untouched rows), checked and reduced to medians in one call each."""
        num_tasks = parts[0][1].shape[0]
        importances = torch.zeros((num_tasks, total), dtype=self._compute_dtype(), device=self.ema[0].device)
        offset = 0
        for theta, grads in parts:
            torch.mul(theta, grads, out=importances[:, offset : offset + theta.numel()])
            offset += theta.numel()
        if not bool(torch.isfinite(importances.abs_().sum())):
            return None
        medians = importances.median(dim=1).values.double().cpu()
        for task in torch.nonzero(medians == 0).flatten().tolist():
            self._warn_zero_median(task, 1.0 - float(torch.count_nonzero(importances[task])) / total)
        return (weights / (medians + EPS)).to(device=importances.device, dtype=importances.dtype)

    def _update_block(self, theta: torch.Tensor, grads: torch.Tensor, ema: torch.Tensor, weights: torch.Tensor,
                      decay: bool) -> torch.Tensor:
        """``Ī ← β Ī + w_t |θ ⊙ g_t|`` on one block (in place); returns the block's new EMA in the compute dtype."""
        importance = (theta * grads).abs_()
        if ema.dtype == torch.bfloat16:
            exact = ema.float()
            if decay:
                exact.mul_(self.beta)
            ema.copy_(stochastic_round_bf16(exact.addcmul_(importance, weights.view(-1, 1)), self.generator))
            return ema.float()
        if decay:
            ema.mul_(self.beta)
        return ema.addcmul_(importance, weights.view(-1, 1))

    @staticmethod
    def _place(rows_value: torch.Tensor, theta: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """A segment's combined gradient from the values of its rows: all of them, or only the touched ones (zero elsewhere)."""
        if index is None:
            return rows_value.view(theta.shape)
        out = torch.zeros_like(theta)
        out.index_copy_(0, index, rows_value.view(index.numel(), *theta.shape[1:]))
        return out

    def _weighted(self, ema: torch.Tensor, grads: torch.Tensor, ema_scale: torch.Tensor) -> torch.Tensor:
        """``Σ_t softmax_t(s_t) g_t / T`` on flat ``(T, n)`` rows, ``s_t = Ī_t / scale_t / τ`` (the un-normalised variant's scores)."""
        ema = ema.to(self._compute_dtype())
        scores = ema / ema_scale.view((-1,) + (1,) * (ema.dim() - 1)) / self.tau
        weights = torch.softmax(scores, dim=0).to(grads.dtype)
        return weights.mul_(grads).sum(0).div_(grads.shape[0])

    def _warn_zero_median(self, task: int, zero_share: float) -> None:
        """Say once per task that the normalisation degenerates: the rule then divides by eps alone."""
        name = self.task_names[task] if task < len(self.task_names) else str(task)
        if name in self._zero_median_warned:
            return
        self._zero_median_warned.add(name)
        log.warning(
            "TACO: the median importance of task %s is 0 (%.0f%% of the parameters got no gradient from it, e.g. "
            "embedding rows its batch did not use), so its importance is divided by eps=1e-12 and the task weights "
            "of most parameters become nearly 0 or 1 (the rule as published, in a regime it was not tuned for). "
            "method.parameters can restrict the rule to parameters every task reaches, e.g. ['^(?!.*embeddings)']",
            name, 100 * zero_share,
        )

    def log_values(self) -> dict[str, float]:
        """Per task, the share of parameters whose largest task weight (> 0.5) is that task's: specialisation."""
        num_tasks = len(self.task_names)
        scale = None if self.normalize else self._ema_scale()
        counts = torch.zeros(num_tasks, dtype=torch.float64)
        total = 0
        for ema in self.ema:
            ema = ema.to(self._compute_dtype())
            scores = ema / self.tau if scale is None else ema / scale.view((-1,) + (1,) * (ema.dim() - 1)) / self.tau
            best, owner = torch.softmax(scores, dim=0).reshape(num_tasks, -1).max(dim=0)
            counts += torch.bincount(owner[best > 0.5].cpu(), minlength=num_tasks).double()
            total += best.numel()
        return {f"mtl/taco/specialised/{n}": float(c / total) for n, c in zip(self.task_names, counts)}

    def _compute_dtype(self) -> torch.dtype:
        """Arithmetic runs in the EMA's dtype, or float32 for a bf16 EMA."""
        return torch.float32 if self.ema[0].dtype == torch.bfloat16 else self.ema[0].dtype

    def _ema_scale(self) -> torch.Tensor:
        """``median_j Ī_t + eps`` per task (the scale of the scores when ``normalize`` is off)."""
        def ema_row(task: int, index: int, out: torch.Tensor) -> None:
            out.copy_(self.ema[index][task].flatten())

        like = torch.empty(0, dtype=self._compute_dtype(), device=self.ema[0].device)
        return task_medians(ema_row, [e[0].numel() for e in self.ema], self.ema[0].shape[0], like) + EPS

    def extra_state(self) -> dict[str, Any]:
        return {"ema": [e.detach().cpu().clone() for e in self.ema], "generator": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        saved = state["ema"]
        if len(saved) != len(self.ema) or any(s.shape != e.shape for s, e in zip(saved, self.ema)):
            raise ValueError("checkpoint's TACO importance EMA does not match this model's parameters")
        for ema, value in zip(self.ema, saved):
            ema.copy_(value)
        self.generator.set_state(state["generator"])
