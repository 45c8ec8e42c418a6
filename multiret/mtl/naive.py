"""Naive multitask training: the sum of task losses, one update (the baseline of TACO's Table 2).

The per-task backwards accumulate in ``p.grad``, which is exactly the gradient of the summed
loss; nothing is buffered. Supports everything the trainer supports.
"""

from __future__ import annotations

from multiret.mtl.base import GradientMethod


class Naive(GradientMethod):
    name = "naive"
    needs_task_gradients = False
