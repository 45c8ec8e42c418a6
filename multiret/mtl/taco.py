"""TACO: per-parameter task weights from an EMA of task importance (Zhang et al., TACL 2023).

For task t and parameter j the instantaneous importance is the first-order Taylor
sensitivity ``I_tj = |θ_j · g_tj|``, divided by its median over all parameters when
``normalize``; an EMA ``Ī`` of it (β, updated every step, warm-up included) gives scores
``Ī / τ``, and a softmax over tasks gives weights ``α_tj``. The update is ``Σ_t g_t / T``
during warm-up and ``Σ_t α_t ⊙ g_t / T`` after (``docs/taco.md`` holds the exact rule).

``median_over`` says which entries a task's median is taken over: ``all`` (the rule as
published: every parameter, zeros included) or ``nonzero`` (the entries where the task's
importance is not zero, the default; ``docs/taco.md`` says why). ``ema_dtype: bfloat16`` halves
the EMA's memory (updates stochastically rounded, an approximation); ``parameters`` restricts
the rule to some parameter groups. The median is ``torch.median``'s: the lower middle value
for an even count.

This file holds the rule written out (:func:`taco_combine`, the reference the tests hold the
callback to) and the callback's settings and state. The callback computes the same thing by a
faster path: the lagged EMA in :mod:`multiret.mtl.taco_ema`, the blocked sweep, medians and
embedding-row bookkeeping in :mod:`multiret.mtl.taco_sweep`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from multiret.mtl.base import GradientMethod
from multiret.mtl.taco_ema import EMA_DTYPES, LaggedEMA
from multiret.mtl.taco_sweep import EPS, Sweep

MEDIAN_OVER = ("all", "nonzero")  # the entries a task's median is taken over: every one (as published), or the non-zero


def row_medians(values: torch.Tensor, median_over: str = "all") -> torch.Tensor:
    """``torch.median``'s value of each row of non-negative ``(T, P)`` values, as ``(T, 1)``: over every entry,
    or (``nonzero``) over the non-zero entries only (0 for a row without any)."""
    if median_over == "all":
        return values.median(dim=-1, keepdim=True).values
    medians = [row[row != 0].median() if bool((row != 0).any()) else row.new_zeros(()) for row in values]
    return torch.stack(medians).unsqueeze(1)


def taco_combine(
    task_grads: torch.Tensor,
    params: torch.Tensor,
    ema: torch.Tensor,
    *,
    beta: float,
    tau: float,
    in_warmup: bool,
    normalize: bool = True,
    median_over: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One TACO step on flat tensors: ``task_grads`` (T, P), ``params`` (P,), ``ema`` (T, P).

    Returns ``(combined (P,), new_ema (T, P))`` without modifying the inputs (a fixed contract).
    ``median_over="all"`` is the rule as published; ``"nonzero"`` takes each task's median over
    the entries where its importance (or, without ``normalize``, its EMA) is not zero.
    """
    num_tasks = task_grads.shape[0]
    importance = (params.unsqueeze(0) * task_grads).abs()
    if normalize:
        importance = importance / (row_medians(importance, median_over) + EPS)
    new_ema = beta * ema + (1.0 - beta) * importance
    if in_warmup:
        return task_grads.sum(0) / num_tasks, new_ema
    if normalize:
        scores = new_ema / tau
    else:
        scores = new_ema / (row_medians(new_ema, median_over) + EPS) / tau
    weights = torch.softmax(scores, dim=0)
    return (weights * task_grads).sum(0) / num_tasks, new_ema


class TACO(GradientMethod):
    """The TACO callback: :func:`taco_combine`'s rule on the whole model, every step, by a faster path.

    Settings of the rule: ``beta``, ``tau``, ``normalize``, ``median_over``, ``warmup_ratio``
    (docs/taco.md). ``ema_dtype: bfloat16`` halves the EMA's memory (stochastically rounded by a
    generator seeded by ``seed``). Settings of the fast path only, which change the result by
    rounding at most: ``block`` (entries swept at a time), ``batched_medians_up_to`` (parameters up to which all
    tasks' medians are selected from one buffer), ``lag_limit`` (how far the lagged EMA may run
    ahead before a real decay).

    State: the importance EMA (``ema``, :mod:`multiret.mtl.taco_ema`, checkpointed) and the
    sweep that updates it (``sweep``, :mod:`multiret.mtl.taco_sweep`). The tests hold the sweep
    to :func:`taco_combine` on the flattened parameters.
    """

    name = "taco"

    def __init__(
        self,
        beta: float = 0.999,
        tau: float = 2.0,
        normalize: bool = True,
        warmup_ratio: float = 0.0,
        median_over: str = "nonzero",
        ema_dtype: str = "float32",
        seed: int = 0,
        block: int = 1 << 16,
        batched_medians_up_to: int = 1 << 22,
        lag_limit: float = 2.0**24,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if median_over not in MEDIAN_OVER:
            raise ValueError(f"method.median_over={median_over!r}; choose one of {list(MEDIAN_OVER)}")
        if ema_dtype not in EMA_DTYPES:
            raise ValueError(f"method.ema_dtype={ema_dtype!r}; choose one of {sorted(EMA_DTYPES)}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"method.beta must be in [0, 1), got {beta}")
        if tau <= 0:
            raise ValueError(f"method.tau must be > 0, got {tau}")
        if not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"method.warmup_ratio must be in [0, 1], got {warmup_ratio}")
        if block < 1 or lag_limit < 1.0:
            raise ValueError(f"method.block must be ≥ 1 and method.lag_limit ≥ 1, got {block} and {lag_limit}")
        self.beta = beta
        self.tau = tau
        self.normalize = normalize
        self.warmup_ratio = warmup_ratio
        self.median_over = median_over
        self.ema = LaggedEMA(beta, EMA_DTYPES[ema_dtype], lag_limit, seed)
        self.sweep = Sweep(self.ema, tau=tau, normalize=normalize, median_over=median_over, block=block,
                           batched_medians_up_to=batched_medians_up_to)

    @property
    def medians(self) -> list[float]:
        """Per task, the median of the latest step that took one (logged)."""
        return self.sweep.medians

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        self.ema.allocate(params, self.row_sparse, num_tasks)
        self.sweep.start(params, self.row_sparse, self.task_names)

    def warmup_steps(self, max_steps: int) -> int:
        return int(self.warmup_ratio * max_steps)

    def importance_ema(self) -> list[torch.Tensor]:
        """The importance EMA ``Ī`` per parameter tensor (``(T, *shape)``, in the compute dtype)."""
        return self.ema.value()

    def combine(
        self, task_grads: list[torch.Tensor], params: list[torch.nn.Parameter], trainer: L.Trainer
    ) -> list[torch.Tensor] | None:
        """The rule on the task buffers in one sweep (or tensor by tensor, for other inputs)."""
        in_warmup = self.step < self.warmup_steps(trainer.max_steps)
        buffers = self.buffers
        if buffers is None or buffers.flat is None or self.ema.flat is None or task_grads is not buffers.grads:
            return self.apply_rule(task_grads, params, in_warmup, self.row_sparse)
        return self.sweep.over_buffers(buffers, in_warmup)

    def apply_rule(
        self, task_grads: list[torch.Tensor], params: list[torch.Tensor], in_warmup: bool,
        row_sparse: list[bool] | None = None,
    ) -> list[torch.Tensor] | None:
        """Update the EMA in place and return each tensor's combined gradient (``row_sparse``: the tables
        worked on by touched rows). Returns None, with the EMA untouched, when an importance is not finite
        (a non-finite task gradient, or a product that overflows)."""
        return self.sweep.over_tensors(task_grads, params, in_warmup, row_sparse)

    def log_values(self) -> dict[str, float]:
        """Per task, the median the rule took last (0 is the degenerate regime of docs/taco.md) and the share of
        parameters whose largest task weight (> 0.5) is that task's: specialisation."""
        counts, total = self.sweep.specialised()
        values = {f"mtl/{self.name}/median/{n}": float(m) for n, m in zip(self.task_names, self.medians)}
        values.update({f"mtl/{self.name}/specialised/{n}": float(c) / total for n, c in zip(self.task_names, counts)})
        return values

    def extra_state(self) -> dict[str, Any]:
        return self.ema.state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema.load_state(state)
