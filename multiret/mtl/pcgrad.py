"""PCGrad: project each task gradient off the others it conflicts with (Yu et al., NeurIPS 2020).

For every task i, in a fresh random order of the other tasks j: if ``pc_i · g_j < 0``,
``pc_i ← pc_i − (pc_i · g_j) / ‖g_j‖² · g_j``; the update is ``Σ_i pc_i`` (the paper's sum).
The TACO authors' trainer divides that sum by T (their PCGrad baseline steps with the mean);
here it is not divided. AdamW is nearly blind to a constant scale (only its ε sees it), but
gradient clipping (``model.max_grad_norm``) is not: the sum is clipped sooner than their mean.
Each ``pc_i`` stays a combination of the task gradients, so the projections run on the T×T
Gram matrix and only the final sum touches the parameters. The order's random generator is
checkpointed.
"""

from __future__ import annotations

from typing import Any

import torch

from multiret.mtl.base import GradientMethod


def pcgrad_coefficients(gram: torch.Tensor, orders: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Coefficients ``c`` with ``Σ_i pc_i = Σ_k c_k g_k``, and the number of conflicts projected away.

    ``orders[i]`` is the order in which task i visits the other tasks.
    """
    num_tasks = gram.shape[0]
    mix = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device)  # pc_i = Σ_k mix[i, k] g_k
    conflicts = 0
    for i in range(num_tasks):
        for j in orders[i]:
            dot = mix[i] @ gram[:, j]
            if dot < 0 and gram[j, j] > 0:
                mix[i, j] -= dot / gram[j, j]
                conflicts += 1
    return mix.sum(0), conflicts


class PCGrad(GradientMethod):
    name = "pcgrad"

    def __init__(self, seed: int = 0, **base: Any) -> None:
        super().__init__(**base)
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.conflicts = 0

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        # made here, not in __init__: ddp_spawn pickles callbacks, and a generator's state tensor does not travel
        self.generator = torch.Generator().manual_seed(self.seed)

    def task_coefficients(self, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        num_tasks = gram.shape[0]
        orders = []
        for i in range(num_tasks):
            others = [j for j in range(num_tasks) if j != i]
            orders.append([others[k] for k in torch.randperm(len(others), generator=self.generator).tolist()])
        coefficients, self.conflicts = pcgrad_coefficients(gram, orders)
        return coefficients

    def log_values(self) -> dict[str, float]:
        return {f"mtl/{self.name}/conflicts": float(self.conflicts)}

    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
