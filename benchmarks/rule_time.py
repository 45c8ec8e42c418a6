"""Median time of each Gram-based method's rule alone: ``task_coefficients`` on a T×T Gram matrix.

    python benchmarks/rule_time.py [--tasks 3] [--calls 50]

Prints one JSON object ``{method: median seconds per call}`` for every conf/method YAML whose
method decides task weights from the Gram matrix (chained calls on fresh random Gram matrices,
so stateful solvers carry their state as in training). This is what such a method adds to a
step beyond buffering the task gradients and forming ``Σ_t w_t g_t``, which every buffered
method shares (PCGrad's cost over naive in benchmarks/step_time.py); it does not depend on the
model, so it can be set against any model's step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from multiret.mtl.base import GradientMethod

METHOD_CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "method"


def gram_methods() -> dict[str, GradientMethod]:
    """Every configured method that overrides ``task_coefficients`` (the Gram-matrix rules)."""
    methods = {}
    for path in sorted(METHOD_CONFIGS.glob("*.yaml")):
        with initialize_config_dir(config_dir=str(METHOD_CONFIGS.parent), version_base="1.3"):
            method = instantiate(compose("train", overrides=[f"method={path.stem}", "seed=0"]).method)
        if type(method).task_coefficients is not GradientMethod.task_coefficients:
            methods[path.stem] = method
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50, help="timed calls per method, after 3 untimed")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    medians = {}
    for name, method in gram_methods().items():
        method.setup_state([], args.tasks)
        seconds = []
        for call in range(args.calls + 3):
            jacobian = torch.randn(args.tasks, 1000, generator=generator, dtype=torch.float64)
            gram, losses = jacobian @ jacobian.T, torch.rand(args.tasks, generator=generator, dtype=torch.float64) + 0.5
            start = time.perf_counter()
            method.task_coefficients(gram, losses)
            if call >= 3:
                seconds.append(time.perf_counter() - start)
        medians[name] = statistics.median(seconds)
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
