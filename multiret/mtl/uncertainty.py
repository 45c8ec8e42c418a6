"""Uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018): learnable task log-variances.

The objective is ``Σ_t exp(−s_t) L_t + s_t`` with ``s_t = log σ_t²``. The model's update is
``Σ_t exp(−s_t) g_t``; the log-variances get their exact gradient ``1 − exp(−s_t) L_t`` and
their own Adam step (``lr``) each training step, unlike the TACO reference's "uw", which is
a plain sum. They start at 0 (all weights 1) and are checkpointed with their optimizer.
"""

from __future__ import annotations

from typing import Any

import torch

from multiret.mtl.base import GradientMethod


class UncertaintyWeighting(GradientMethod):
    name = "uncertainty"

    def __init__(self, lr: float = 1e-3, **base: Any) -> None:
        super().__init__(**base)
        if lr <= 0:
            raise ValueError(f"method.lr must be > 0, got {lr}")
        self.lr = lr
        self.log_vars = torch.nn.Parameter(torch.zeros(0, dtype=torch.float64))
        self.optimizer: torch.optim.Optimizer | None = None

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        self.log_vars = torch.nn.Parameter(torch.zeros(num_tasks, dtype=torch.float64))
        self.optimizer = torch.optim.Adam([self.log_vars], lr=self.lr)

    def task_coefficients(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        weights = torch.exp(-self.log_vars.detach())
        with torch.enable_grad():
            objective = (torch.exp(-self.log_vars) * losses + self.log_vars).sum()
            self.optimizer.zero_grad()
            objective.backward()
        self.optimizer.step()
        return weights

    def log_values(self) -> dict[str, float]:
        return {f"mtl/{self.name}/weight/{n}": float(w) for n, w in zip(self.task_names, torch.exp(-self.log_vars.detach()))}

    def extra_state(self) -> dict[str, Any]:
        return {"log_vars": self.log_vars.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])
        self.optimizer.load_state_dict(state["optimizer"])
