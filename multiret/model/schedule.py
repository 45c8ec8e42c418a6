"""Learning-rate schedule: linear warm-up then linear decay to zero (DPR, OpenMatch and TACO use it)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from multiret.errors import UserError


def linear_warmup_decay(optimizer: torch.optim.Optimizer, num_training_steps: int, warmup_ratio: float = 0.1) -> LambdaLR:
    """Scale the learning rate by ``s / w`` for the first ``w = warmup_ratio·N`` steps, then down to 0 at ``N``."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise UserError(f"scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warmup = int(warmup_ratio * num_training_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - warmup))

    return LambdaLR(optimizer, factor)
