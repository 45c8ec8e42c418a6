"""FAMO (Liu, Liang, Chen, Wang, Liu; NeurIPS 2023, "FAMO: Fast Adaptive Multitask Optimization").

The update is the gradient of ``Σ_t z_t log L_t`` rescaled to unit total weight:
``d = Σ_t c_t g_t`` with ``c_t = (z_t / L_t) / Σ_s (z_s / L_s)`` and ``z = softmax(ξ)``. The
logits ξ learn to balance the tasks' log-loss decrease: with ``δ_t = log L_t(before) −
log L_t(after)`` they take an Adam step (learning rate ``lr``, L2 decay ``gamma``) on
``−(∂z/∂ξ)ᵀ δ``. Only the losses are needed, so no task gradient is buffered (O(1) extra
memory, :mod:`multiret.mtl.loss_weights`). The loss "after" is the next step's loss, on the next
batch, so FAMO costs no extra forward; the logits therefore move once a step, one step late.
Losses are the global batch's (all-reduced under DDP), so every process weighs alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from multiret.model.gather import world
from multiret.mtl.loss_weights import LossWeighting


class FAMO(LossWeighting):
    name = "famo"
    weights_need_losses = True

    def __init__(self, lr: float = 0.025, gamma: float = 0.01, eps: float = 1e-8, **base: Any) -> None:
        super().__init__(**base)
        if lr <= 0 or gamma < 0 or eps <= 0:
            raise ValueError(f"method.lr and method.eps must be > 0 and method.gamma ≥ 0, got {lr}, {eps}, {gamma}")
        self.lr, self.gamma, self.eps = lr, gamma, eps
        self.logits = torch.nn.Parameter(torch.zeros(0, dtype=torch.float64))
        self.optimizer: torch.optim.Optimizer | None = None
        self.previous_losses: torch.Tensor | None = None
        self.z = torch.zeros(0, dtype=torch.float64)

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        self.logits = torch.nn.Parameter(torch.zeros(num_tasks, dtype=torch.float64))
        self.optimizer = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.gamma)
        self.z = torch.softmax(self.logits.detach(), 0)

    def task_weight(self, task: int, loss: torch.Tensor) -> float:
        loss = loss.detach().double().clone()
        _, size = world()
        if size > 1:
            dist.all_reduce(loss)
            loss /= size
        return float(self.z[task] / (loss.cpu() + self.eps))

    def total_scale(self, weights: list[float]) -> float:
        return 1.0 / sum(weights)

    def after_update(self) -> None:
        losses = self.task_losses + self.eps
        if self.previous_losses is not None:
            decrease = self.previous_losses.log() - losses.log()
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad(torch.softmax(self.logits, 0), self.logits, grad_outputs=-decrease)
            self.optimizer.zero_grad()
            self.logits.grad = gradient
            self.optimizer.step()
            self.z = torch.softmax(self.logits.detach(), 0)
        self.previous_losses = losses

    def log_values(self) -> dict[str, float]:
        return {f"mtl/{self.name}/weight/{n}": float(z) for n, z in zip(self.task_names, self.z)}

    def extra_state(self) -> dict[str, Any]:
        previous = self.previous_losses
        return {"logits": self.logits.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "previous_losses": previous.clone() if previous is not None else torch.zeros(0, dtype=torch.float64)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.previous_losses = state["previous_losses"].clone() if len(state["previous_losses"]) else None
        self.z = torch.softmax(self.logits.detach(), 0)
