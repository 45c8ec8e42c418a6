"""Cross-device negatives: gather every rank's embeddings while keeping their gradients."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside distributed training."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate ``local`` from all ranks in rank order; gradients flow back to each owner."""
    _, size = world()
    if size == 1:
        return local
    return torch.cat(all_gather(local), dim=0)
