"""Nash-MTL (Navon et al., ICML 2022, "Multi-Task Learning as a Bargaining Game"), torchjd's solver.

torchjd's ``NashMTL`` weighting is built for a known number of tasks and keeps state between
steps (the previous weights that warm-start its cvxpy/ECOS iterations, the Gram normalisation,
a step count), so it is made once the tasks are known and that state is checkpointed. It reads
the Jacobian only through its Gram matrix and the norm of ``Σ_t w_t g_t``, both of which the
T×T factor of :mod:`multiret.mtl.torchjd_weighting` gives exactly. Needs ``multiret[solvers]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchjd.aggregation import NashMTL as TorchJDNashMTL

from multiret.mtl.torchjd_weighting import TorchJDWeighting, build_torchjd


class NashMTL(TorchJDWeighting):
    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20,
                 name: str = "nash_mtl", **base: Any) -> None:
        super().__init__(weighting=None, name=name, takes="matrix", **base)
        self.options = {"max_norm": max_norm, "update_weights_every": update_weights_every, "optim_niter": optim_niter}

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        super().setup_state(params, num_tasks)
        self.weighting = build_torchjd(lambda: TorchJDNashMTL(n_tasks=num_tasks, **self.options), self.name).weighting

    def extra_state(self) -> dict[str, Any]:
        solver = self.weighting
        return {"previous_alpha": torch.from_numpy(np.array(solver.prvs_alpha)),
                "normalization": torch.from_numpy(np.array(solver.normalization_factor)),
                "solver_step": float(solver.step)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        solver = self.weighting
        solver.prvs_alpha = state["previous_alpha"].numpy().copy()
        solver.normalization_factor = state["normalization"].numpy().copy()
        solver.step = state["solver_step"]
        if solver.step > 0:
            solver._init_optim_problem()  # torchjd builds its cvxpy problem on the first call; a resumed run has had it
