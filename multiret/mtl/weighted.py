"""Static loss weights ``Σ_t w_t L_t``: the tuned weighted sum that every adaptive method must beat.

Xin et al. (NeurIPS 2022, "Do Current Multi-Task Optimization Methods in Deep Learning Even
Help?") and Kurin et al. (NeurIPS 2022, "In Defense of the Unitary Scalarization for Deep
Multi-Task Learning") find a weighted sum with tuned weights as good as the adaptive methods;
``experiment=vital_weights_sweep`` tunes them on dev. A task not named in ``weights`` weighs 1,
so ``weights: {}`` is naive training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from multiret.errors import UserError
from multiret.mtl.loss_weights import LossWeighting


class Weighted(LossWeighting):
    name = "weighted"

    def __init__(self, weights: Mapping[str, float] | None = None, **base: Any) -> None:
        super().__init__(**base)
        self.weights_by_name = {str(task): float(w) for task, w in (weights or {}).items()}
        for task, weight in self.weights_by_name.items():
            if not (math.isfinite(weight) and weight > 0):
                raise UserError(f"method.weights.{task} must be a finite number > 0, got {weight} "
                                "(to leave a task out, drop it from data.task_names)")
        self.weights = torch.zeros(0, dtype=torch.float64)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tasks = list(trainer.datamodule.task_names)
        unknown = sorted(set(self.weights_by_name) - set(tasks))
        if unknown:
            raise UserError(f"method.weights names task(s) {unknown} that data.task_names does not train; "
                            f"the tasks are {tasks}")
        self.weights = torch.tensor([self.weights_by_name.get(task, 1.0) for task in tasks], dtype=torch.float64)
        super().on_fit_start(trainer, pl_module)

    def task_weight(self, task: int, loss: torch.Tensor) -> float:
        return float(self.weights[task])
