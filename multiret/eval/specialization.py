"""Task specialisation of parameters: the entropy of each parameter's task-importance distribution.

TACO's claim (Zhang et al., TACL 2023, §5) is that it learns more task-specialised parameters
than naive multitask training. For parameter j with task importances ``I_tj`` (TACO's EMA
``Ī``, or ``|θ ⊙ g_t|`` averaged over held-out batches for any other method),
``p_tj = I_tj / Σ_t I_tj`` and the normalised entropy ``H_j = −Σ_t p_tj log p_tj / log T``
lies in [0, 1]: 0 means one task alone matters for the parameter, 1 that all matter equally.
Parameters no task touches (``Σ_t I_tj = 0``) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from multiret.errors import UserError
from multiret.eval.figures import new_figure, save_figure


def importance_entropy(importance: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised entropy and the most important task of every touched parameter, from ``(T, *shape)`` tensors."""
    entropies, owners = [], []
    for tensor in importance:
        flat = tensor.detach().double().reshape(tensor.shape[0], -1).cpu()
        total = flat.sum(0)
        kept = flat[:, total > 0] / total[total > 0]
        terms = torch.where(kept > 0, kept * kept.clamp(min=1e-300).log(), torch.zeros_like(kept))
        entropies.append(-terms.sum(0) / math.log(tensor.shape[0]))
        owners.append(kept.argmax(0))
    return torch.cat(entropies), torch.cat(owners)


def summarize(entropy: torch.Tensor, owner: torch.Tensor, task_names: Sequence[str], low: float = 0.5) -> dict[str, Any]:
    """Mean entropy, the share of low-entropy (specialised) parameters, and which task each of those serves."""
    specialised = entropy < low
    count = int(specialised.sum())
    per_task = torch.bincount(owner[specialised], minlength=len(task_names)).double() / max(count, 1)
    return {
        "parameters": int(entropy.numel()),
        "mean_entropy": float(entropy.mean()) if entropy.numel() else float("nan"),
        "low_entropy_threshold": low,
        "low_entropy_share": count / max(entropy.numel(), 1),
        "per_task_share": {name: float(share) for name, share in zip(task_names, per_task)},
    }


def measure_importance(model: Any, batches: Any, steps: int) -> list[torch.Tensor]:
    """``|θ ⊙ g_t|`` per task averaged over ``steps`` multitask batches (``batches.batch(step)``)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    importance: list[torch.Tensor] | None = None
    for step in range(steps):
        batch = batches.batch(step)
        if importance is None:
            importance = [torch.zeros((len(batch), *p.shape), dtype=torch.float64) for p in params]
        for task, task_batch in enumerate(batch):
            model.zero_grad(set_to_none=True)
            model.task_loss(task_batch).backward()
            for total, param in zip(importance, params):
                if param.grad is not None:
                    total[task] += (param.detach() * param.grad).abs().double().cpu() / steps
    if importance is None:
        raise UserError("no batch to measure task importance on (steps must be ≥ 1)")
    return importance


def plot_histograms(entropies: dict[str, torch.Tensor], path: Path) -> None:
    figure, axes = new_figure(7)
    for label, entropy in entropies.items():
        axes.hist(entropy.numpy(), bins=50, range=(0, 1), histtype="step", density=True, label=label)
    axes.set_xlabel("normalised entropy of the task-importance distribution (0 = one task)")
    axes.set_ylabel("density of parameters")
    axes.legend(fontsize="small")
    save_figure(figure, path)
