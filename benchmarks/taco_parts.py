"""Medians (milliseconds) of the parts of TACO's step that docs/benchmarks.md quotes, on synthetic tensors.

    python benchmarks/taco_parts.py

Prints one JSON object:
- ``torch_median_3x392k_ms``: ``torch.median(dim=1)`` over three rows of 392k importances (the tiny T5's medians);
- ``numpy_median_3x392k_ms``: the same medians as TACO takes them, by ``lower_medians_`` (numpy's partition),
  on a copy refilled each time (the copy's cost included);
- ``torch_count_nonzero_3x11m_ms`` / ``numpy_count_nonzero_3x11m_ms``: counting the non-zero entries of three
  rows of 11M importances (MiniLM's, for the default non-zero median) by ``torch.count_nonzero(dim=1)``
  against numpy's ``count_nonzero`` row by row (what ``lower_medians_`` uses);
- ``numpy_nonzero_median_3x11m_ms``: those rows' non-zero medians by ``lower_medians_``, on a copy refilled
  each time (the copy's cost included);
- ``fresh_zeros_47mb_ms`` / ``kept_zero_47mb_ms``: a new zeroed 47 MB tensor against refilling a kept one
  (the page-fault cost that makes TACO keep its buffers from step to step);
- ``specialisation_share_ms``: ``TACO.log_values`` on MiniLM-sized state (3 tasks, a 30,522×384 table and
  10.8M other parameters), the work of a logging step.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from multiret.mtl.taco import TACO
from multiret.mtl.taco_sweep import lower_medians_


def median_ms(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``work`` in milliseconds, after one untimed call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    logging.disable(logging.WARNING)
    generator = torch.Generator().manual_seed(0)
    importances = (torch.randn(3, 392_000, generator=generator) * torch.rand(3, 392_000, generator=generator)).abs_()
    scratch = torch.empty_like(importances)
    large = (torch.randn(3, 11_000_000, generator=generator) * torch.rand(3, 11_000_000, generator=generator)).abs_()
    large[:, ::20] = 0.0  # a few entries without importance, as where a task's gradient is exactly zero
    large_scratch = torch.empty_like(large)
    kept = torch.empty(11_700_000)
    params = [torch.randn(30_522, 384, generator=generator), torch.randn(10_800_000, generator=generator)]
    taco = TACO()
    taco.task_names = ["a", "b", "c"]
    taco.row_sparse = [True, False]
    taco.setup_state(params, num_tasks=3)
    for ema in taco.ema.stored:
        ema.copy_(torch.rand(ema.shape, generator=generator) * 1e9)
    results = {
        "torch_median_3x392k_ms": median_ms(lambda: importances.median(dim=1), 21),
        "numpy_median_3x392k_ms": median_ms(lambda: lower_medians_(scratch.copy_(importances)), 21),
        "torch_count_nonzero_3x11m_ms": median_ms(lambda: torch.count_nonzero(large, dim=1).tolist(), 9),
        "numpy_count_nonzero_3x11m_ms": median_ms(lambda: [np.count_nonzero(row) for row in large.numpy()], 9),
        "numpy_nonzero_median_3x11m_ms": median_ms(lambda: lower_medians_(large_scratch.copy_(large), True), 9),
        "fresh_zeros_47mb_ms": median_ms(lambda: torch.zeros(11_700_000), 15),
        "kept_zero_47mb_ms": median_ms(kept.zero_, 15),
        "specialisation_share_ms": median_ms(taco.log_values, 5),
    }
    print(json.dumps({name: round(value, 2) for name, value in results.items()}))


if __name__ == "__main__":
    main()
