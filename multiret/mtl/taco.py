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

from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from multiret.mtl.base import GradientMethod

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

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        self.ema = [torch.zeros((num_tasks, *p.shape), dtype=self.ema_dtype, device=p.device) for p in params]
        device = params[0].device if params else torch.device("cpu")
        self.generator = torch.Generator(device=device).manual_seed(self.seed)

    def warmup_steps(self, max_steps: int) -> int:
        return int(self.warmup_ratio * max_steps)

    def combine(
        self, task_grads: list[torch.Tensor], params: list[torch.nn.Parameter], trainer: L.Trainer
    ) -> list[torch.Tensor]:
        in_warmup = self.step < self.warmup_steps(trainer.max_steps)
        return self.apply_rule(task_grads, params, in_warmup)

    def apply_rule(self, task_grads: list[torch.Tensor], params: list[torch.Tensor], in_warmup: bool) -> list[torch.Tensor]:
        """Update the EMA in place and return the combined gradient of every parameter tensor.

        One task at a time, the importances of all parameters go into one reused P-vector (the
        median needs them all); the EMA rows are updated straight from it.
        """
        num_tasks = task_grads[0].shape[0]
        shapes = [(-1,) + (1,) * p.dim() for p in params]
        buffer = torch.empty(sum(p.numel() for p in params), dtype=self._compute_dtype(), device=self.ema[0].device)
        for task in range(num_tasks):
            slices = []
            offset = 0
            for param, grads in zip(params, task_grads):
                part = buffer[offset : offset + param.numel()].view(param.shape)
                torch.mul(param.detach(), grads[task], out=part).abs_()
                slices.append(part)
                offset += param.numel()
            weight = 1.0 - self.beta
            if self.normalize:
                weight /= float(buffer.median()) + EPS
            for ema, part in zip(self.ema, slices):
                row = ema[task]
                if row.dtype != torch.bfloat16:
                    row.mul_(self.beta).add_(part, alpha=weight)
                else:
                    row.copy_(stochastic_round_bf16(row.float().mul_(self.beta).add_(part, alpha=weight), self.generator))
        del buffer
        if in_warmup:
            return [g.sum(0).div_(num_tasks) for g in task_grads]
        ema_scale = None if self.normalize else self._ema_scale()
        combined = []
        for ema, grads, shape in zip(self.ema, task_grads, shapes):
            ema = ema.to(self._compute_dtype())
            scores = ema / self.tau if self.normalize else ema / ema_scale.view(shape) / self.tau
            weights = torch.softmax(scores, dim=0).to(grads.dtype)
            combined.append(weights.mul_(grads).sum(0).div_(num_tasks))
        return combined

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
