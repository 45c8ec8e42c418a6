"""TACO's importance EMA ``Ī``, stored lagged (and optionally in bf16), with the checkpoint layouts it reads.

``Ī`` is stored as ``Ī · β^-lag``: then the update ``Ī ← β Ī + (1 − β) I`` is
``stored += (1 − β) β^-lag I`` with ``lag`` one more than the step before, so the entries a step
does not touch (the unused rows of an embedding table) cost nothing, and no step makes a
separate decay pass. When ``β^-lag`` would pass ``lag_limit`` (2^24: every ~16,600 steps at
β = 0.999) the stored values are decayed for real and ``lag`` starts again from 0.
"""

from __future__ import annotations

from typing import Any

import torch

from multiret.errors import UserError
from multiret.mtl.buffers import task_tensors

EMA_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def stochastic_round_bf16(values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """float32 → bfloat16, rounding away from zero with probability equal to the discarded fraction.

    Unbiased, so a bf16 EMA with β = 0.999 still moves: with round-to-nearest, an update of
    (1 − β)·I below half a bf16 step (2⁻⁹ relative) would be lost every time.
    """
    noise = torch.randint(0, 1 << 16, values.shape, dtype=torch.int32, device=values.device, generator=generator)
    return ((values.view(torch.int32) + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def decay_(ema: torch.Tensor, factor: float, generator: torch.Generator | None) -> None:
    """``Ī ← factor · Ī`` in place (stochastically rounded for a bf16 EMA)."""
    if ema.dtype == torch.bfloat16:
        ema.copy_(stochastic_round_bf16(ema.float().mul_(factor), generator))
    else:
        ema.mul_(factor)


class LaggedEMA:
    """``Ī`` per parameter tensor, ``(T, *shape)`` each, stored as ``Ī · β^-lag`` (``stored``, ``lag``).

    ``stored`` are views of one ``(T, P)`` tensor (``flat``) laid out like the task-gradient
    buffers, so the rule sweeps both with the same column offsets. A bf16 EMA's updates are
    computed in float32 and stochastically rounded by ``generator`` (seeded by ``seed``,
    checkpointed).
    """

    def __init__(self, beta: float, dtype: torch.dtype, lag_limit: float = 2.0**24, seed: int = 0) -> None:
        self.beta = beta
        self.dtype = dtype
        self.lag_limit = lag_limit
        self.seed = seed
        self.stored: list[torch.Tensor] = []
        self.flat: torch.Tensor | None = None
        self.lag = 0
        self.generator: torch.Generator | None = None  # made in allocate: ddp_spawn pickles callbacks

    def allocate(self, params: list[torch.Tensor], row_sparse: list[bool], num_tasks: int) -> None:
        """Zero ``Ī`` for these parameters and tasks, and seed the rounding."""
        self.flat, self.stored = task_tensors(params, row_sparse, num_tasks, self.dtype)
        self.lag = 0
        device = params[0].device if params else torch.device("cpu")
        self.generator = torch.Generator(device=device).manual_seed(self.seed)

    @property
    def compute_dtype(self) -> torch.dtype:
        """Arithmetic runs in the EMA's dtype, or float32 for a bf16 EMA."""
        return torch.float32 if self.stored[0].dtype == torch.bfloat16 else self.stored[0].dtype

    def value(self) -> list[torch.Tensor]:
        """``Ī`` per parameter tensor (``(T, *shape)``, in the compute dtype)."""
        factor = self.beta**self.lag
        return [e.to(self.compute_dtype) * factor for e in self.stored]

    def advance(self, gathered: list[torch.Tensor]) -> float:
        """``β^-lag`` for this step's update, with ``lag`` one step further; when that would pass ``lag_limit``
        the stored EMA (and ``gathered``, table rows copied out of it) is first multiplied by ``β^(lag + 1)``
        (the real decay) and lag restarts at 0."""
        if self.beta > 0 and self.beta ** -(self.lag + 1) <= self.lag_limit:
            self.lag += 1
            return self.beta**-self.lag
        factor = self.beta ** (self.lag + 1)
        for ema in self.stored + gathered:
            decay_(ema, factor, self.generator)
        self.lag = 0
        return 1.0

    def add_(self, stored: torch.Tensor, importance: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``stored += w_t I_t`` on a block of stored rows ``(T, n)`` (in place); returns the block in the
        compute dtype."""
        if stored.dtype == torch.bfloat16:
            exact = stored.float().addcmul_(importance, weights.view(-1, 1))
            stored.copy_(stochastic_round_bf16(exact, self.generator))
            return stored.float()
        return stored.addcmul_(importance, weights.view(-1, 1))

    def state(self) -> dict[str, Any]:
        """The checkpointed state: the stored values and lag (``Ī`` by :func:`importance_ema_from_state`)."""
        return {"ema_stored": [e.detach().cpu().clone() for e in self.stored], "ema_lag": self.lag,
                "beta": self.beta, "generator": self.generator.get_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`'s values, or a checkpoint's written before the lagged storage."""
        saved, lag = stored_ema(state)
        if len(saved) != len(self.stored) or any(s.shape != e.shape for s, e in zip(saved, self.stored)):
            raise UserError("cannot resume: the checkpoint's TACO importance EMA does not match this run's parameters (another "
                            "model or method.parameters); resume with the same ones, or start a fresh run folder "
                            "(resume=false, no ckpt_path)")
        for ema, value in zip(self.stored, saved):
            ema.copy_(value)
        self.lag = lag
        self.generator.set_state(state["generator"])


def has_importance_ema(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's gradient-method state holds TACO's importance EMA (``taco``, ``taco_published``)."""
    return "ema_stored" in state or "ema" in state


def stored_ema(state: dict[str, Any]) -> tuple[list[torch.Tensor], int]:
    """A checkpoint's stored EMA and its lag; checkpoints written before the lagged storage hold ``Ī`` as
    ``ema`` (lag 0), so they resume exactly too."""
    if "ema_stored" in state:
        return list(state["ema_stored"]), int(state["ema_lag"])
    return list(state["ema"]), 0


def importance_ema_from_state(state: dict[str, Any]) -> list[torch.Tensor]:
    """The importance EMA ``Ī`` (float32) from a checkpoint's TACO state (stored as ``Ī · β^-lag``)."""
    saved, lag = stored_ema(state)
    factor = state["beta"] ** lag if lag else 1.0
    return [stored.float() * factor for stored in saved]
