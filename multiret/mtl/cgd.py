"""CGD, the TACO reference's "cgd" baseline: task weights from gradient alignment and losses.

With unit-normalised task gradients ĝ and losses L, ``r_i = Σ_j (L_i L_j)^β (ĝ_i · ĝ_j)`` and
the weights follow ``w ← softmax(r / τ + log w)`` (from uniform); the update is ``Σ_t w_t g_t``
on the raw gradients. Reference KILT settings: β = 0.25, τ = 100 (Zhang et al. 2023, §4;
WenzhengZhang/TACO).
"""

from __future__ import annotations

from typing import Any

import torch

from multiret.mtl.base import GradientMethod


def cgd_weights(gram: torch.Tensor, losses: torch.Tensor, previous: torch.Tensor, beta: float, tau: float,
                normalize: bool = True) -> torch.Tensor:
    """The new task weights from the Gram matrix, the losses and the previous weights."""
    alignment = gram
    if normalize:
        norms = gram.diagonal().clamp(min=0).sqrt().clamp(min=1e-30)
        alignment = gram / torch.outer(norms, norms)
    loss_weights = torch.outer(losses, losses).clamp(min=0).pow(beta)
    scores = (loss_weights * alignment).sum(-1)
    return torch.softmax(scores / tau + previous.log(), dim=0)


class CGD(GradientMethod):
    name = "cgd"

    def __init__(self, beta: float = 0.25, tau: float = 100.0, normalize: bool = True, **base: Any) -> None:
        super().__init__(**base)
        if tau <= 0:
            raise ValueError(f"method.tau must be > 0, got {tau}")
        self.beta = beta
        self.tau = tau
        self.normalize = normalize
        self.weights = torch.zeros(0, dtype=torch.float64)

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        self.weights = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)

    def task_coefficients(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        self.weights = cgd_weights(gram, losses, self.weights, self.beta, self.tau, self.normalize)
        return self.weights

    def log_values(self) -> dict[str, float]:
        return {f"mtl/{self.name}/weight/{n}": float(w) for n, w in zip(self.task_names, self.weights)}

    def extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()
