"""Methods that weight the task losses, ``Σ_t w_t L_t``, with no per-task gradient buffers (O(1) extra memory).

The bi-encoder backpropagates one task at a time into ``p.grad``, as for naive training. Scaling
a task's loss by ``w_t`` is scaling its gradient, so just before task t's backward the
gradients held so far are multiplied by ``w_{t-1} / w_t``: ``p.grad`` then holds
``Σ_{s≤t} (w_s / w_t) g_s`` after it, and one last multiplication by ``w_T · scale`` gives
``scale · Σ_t w_t g_t``. That costs one in-place pass over the gradients per task (none where
the ratio is 1) and no memory. A weight must be decided when its task's backward starts, from
the task's own loss at most; so a loss-dependent weight needs ``data.micro_batches=1`` (with more,
a task's loss is only known after its last micro-batch). A non-finite loss makes the gradients
non-finite (a ratio of inf or nan), and the base skips the step.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from multiret.errors import UserError
from multiret.mtl.base import GradientMethod


class LossWeighting(GradientMethod):
    """A method whose update is ``scale · Σ_t w_t g_t``, each ``w_t`` known when task t's backward starts."""

    needs_task_gradients = False
    weights_need_losses = False  # True: the weight reads the task's loss, so data.micro_batches must be 1

    def __init__(self, **base: Any) -> None:
        super().__init__(**base)
        self._held: float | None = None  # the weight of the task whose gradient p.grad holds last, this step
        self._step_weights: list[float] = []

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        micro_batches = getattr(trainer.datamodule, "micro_batches", 1)
        if self.weights_need_losses and micro_batches != 1:
            raise UserError(
                f"method={self.name} weights each task by its loss before the task's backward, so it needs "
                f"data.micro_batches=1 (got {micro_batches}); lower data.batch_size to save memory instead, or pick another method"
            )
        super().on_fit_start(trainer, pl_module)

    def task_weight(self, task: int, loss: torch.Tensor) -> float:
        """The weight of task ``task`` this step, given the loss of its backward."""
        raise NotImplementedError(f"method {self.name} must implement task_weight()")

    def total_scale(self, weights: list[float]) -> float:
        """The factor of the whole update once every task's weight is known (default 1)."""
        return 1.0

    def after_update(self) -> None:
        """Move the method's state after a finite step (default: nothing)."""

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        super().on_before_backward(trainer, pl_module, loss)
        weight = self.task_weight(self._active_task(pl_module), loss)
        if self._held is not None:
            self._scale_gradients(self._held / weight if weight != 0 else math.inf)
        self._held = weight
        self._step_weights.append(weight)

    @override
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        log_now = self.step % self.log_every_n_steps == 0
        if self._held is not None:
            self._scale_gradients(self._held * self.total_scale(self._step_weights))
        self._held, self._step_weights = None, []
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        if not self.skipped_last_update:
            self.after_update()
            if log_now and self.log_values():
                pl_module.log_dict(self.log_values(), on_step=True, batch_size=1)

    def _scale_gradients(self, factor: float) -> None:
        if factor == 1.0:
            return
        grads = [p.grad for p in self._params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor)
