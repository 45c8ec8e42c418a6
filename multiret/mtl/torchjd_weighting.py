"""Any torchjd weighting as a multiret gradient method, through the task Gram matrix.

torchjd (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024; PyPI
``torchjd``) computes most aggregators' task weights from the Gramian ``G = J Jᵀ`` of the
Jacobian ``J`` whose rows are the task gradients: UPGrad, MGDA, CAGrad, IMTL-G, Aligned-MTL,
DualProj. multiret's base class already forms that Gram matrix (float64, on the CPU, the same on
every DDP process) and applies ``Σ_t w_t g_t`` per parameter tensor, so torchjd's own weighting
runs unchanged on it: one YAML in ``conf/method/`` names the torchjd class, nothing else.

A few torchjd weightings are written over the Jacobian itself (``takes: matrix``: random loss
weighting, Nash-MTL) but read only its Gram matrix (or its shape). They get the T×T matrix
``F = V √Λ`` from ``G = V Λ Vᵀ``, whose Gram matrix ``F Fᵀ`` is ``G``, in place of the
P-column Jacobian. A weighting that draws random numbers (``seed`` set) draws them from its own
generator state, seeded by the run seed and checkpointed, so a resumed run draws the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch
from torchjd.aggregation import Weighting

from multiret.errors import UserError
from multiret.mtl.base import GradientMethod

T = TypeVar("T")


def build_torchjd(make: Callable[[], T], method: str) -> T:
    """``make()``, with torchjd's error for a missing optional solver (cvxpy, ECOS) turned into one line naming the fix."""
    try:
        return make()
    except ImportError as error:
        raise UserError(f"method={method}: {error} (or: pip install 'multiret[solvers]')") from error


def gram_factor(gram: torch.Tensor) -> torch.Tensor:
    """A square matrix ``F`` with ``F Fᵀ = G`` (negative rounding-noise eigenvalues clipped to 0)."""
    eigenvalues, vectors = torch.linalg.eigh(gram)
    return vectors * eigenvalues.clamp(min=0).sqrt()


class TorchJDWeighting(GradientMethod):
    """The task weights of a torchjd :class:`~torchjd.aggregation.Weighting`, from the step's Gram matrix.

    ``weighting`` makes the torchjd weighting (the YAML's ``_partial_`` class, so that a missing
    solver is reported by :func:`build_torchjd`); ``name`` is the method's id (its YAML's file
    name; one class serves every torchjd weighting, so it has no default); ``takes`` what the
    weighting reads: ``gramian`` (the Gram matrix) or ``matrix`` (a Jacobian, for which it gets
    :func:`gram_factor`).
    """

    def __init__(self, weighting: Callable[[], Weighting] | None, name: str, takes: Literal["gramian", "matrix"] = "gramian",
                 seed: int | None = None, **base: Any) -> None:
        super().__init__(name=name, **base)
        if takes not in ("gramian", "matrix"):
            raise ValueError(f"method.takes must be 'gramian' or 'matrix', got {takes!r}")
        self.weighting = build_torchjd(weighting, name) if weighting is not None else None
        self.takes = takes
        self.seed = seed
        self.rng_state: torch.Tensor | None = None
        self.weights = torch.zeros(0, dtype=torch.float64)

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        if self.seed is not None:
            self.rng_state = torch.Generator().manual_seed(self.seed).get_state()

    def task_coefficients(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        stat = gram if self.takes == "gramian" else gram_factor(gram)
        if self.rng_state is None:
            self.weights = self.weighting(stat).to(torch.float64)
            return self.weights
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.rng_state)
            self.weights = self.weighting(stat).to(torch.float64)
            self.rng_state = torch.get_rng_state()
        return self.weights

    def log_values(self) -> dict[str, float]:
        return {f"mtl/{self.name}/weight/{n}": float(w) for n, w in zip(self.task_names, self.weights)}

    def extra_state(self) -> dict[str, Any]:
        return {} if self.rng_state is None else {"rng_state": self.rng_state.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.rng_state is not None:
            self.rng_state = state["rng_state"].clone()
