"""GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018): learn task weights that balance gradient norms.

The update is ``Σ_t w_t g_t``. Then, with ``G_t = w_t ‖g_t‖``, ``Ḡ = mean_t G_t``, loss ratios
``L̃_t = L_t / L_t(0)`` and relative rates ``r_t = L̃_t / mean(L̃)``, the weights take an Adam
step (``lr``) on ``Σ_t |G_t − Ḡ r_t^α|`` (the target held constant) and are renormalised to
sum to T. Norms are over all trainable parameters (the paper uses the last shared layer).
Unlike the TACO reference (weights no optimizer holds, the combined gradient normalised),
the weights move. Asymmetry α = 1.5 (the reference's KILT setting).
"""

from __future__ import annotations

from typing import Any

import torch

from multiret.mtl.base import GradientMethod


class GradNorm(GradientMethod):
    name = "gradnorm"

    def __init__(self, alpha: float = 1.5, lr: float = 0.025, **base: Any) -> None:
        super().__init__(**base)
        if lr <= 0:
            raise ValueError(f"method.lr must be > 0, got {lr}")
        self.alpha = alpha
        self.lr = lr
        self.weights = torch.nn.Parameter(torch.zeros(0, dtype=torch.float64))
        self.initial_losses: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        self.weights = torch.nn.Parameter(torch.ones(num_tasks, dtype=torch.float64))
        self.optimizer = torch.optim.Adam([self.weights], lr=self.lr)
        self.initial_losses = None

    def task_coefficients(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        coefficients = self.weights.detach().clone()
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        norms = gram.diagonal().clamp(min=0).sqrt()
        ratios = losses / self.initial_losses
        with torch.enable_grad():
            weighted_norms = self.weights * norms
            target = (weighted_norms.mean() * (ratios / ratios.mean()).pow(self.alpha)).detach()
            objective = (weighted_norms - target).abs().sum()
            self.optimizer.zero_grad()
            objective.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.weights.clamp_(min=1e-8)
            self.weights.mul_(len(self.weights) / self.weights.sum())
        return coefficients

    def log_values(self) -> dict[str, float]:
        return {f"mtl/{self.name}/weight/{n}": float(w) for n, w in zip(self.task_names, self.weights.detach())}

    def extra_state(self) -> dict[str, Any]:
        return {
            "weights": self.weights.detach().clone(),
            "initial_losses": None if self.initial_losses is None else self.initial_losses.clone(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weights.copy_(state["weights"])
        self.initial_losses = state["initial_losses"]
        self.optimizer.load_state_dict(state["optimizer"])
