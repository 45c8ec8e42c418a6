"""Where a gradient method's extra step time goes: median milliseconds of its callback's parts, in one process.

    python benchmarks/callback_time.py                  # tiny random T5 on the CPU, naive and TACO
    python benchmarks/callback_time.py --model minilm   # all-MiniLM-L6-v2

Prints one JSON object ``{method: {part: median ms}}`` (details go to stderr). Parts:
``step`` (the whole optimizer step, as ``step_time.py`` times it), ``after_backward`` (moving one
task's gradients into its buffers, once per task and micro-batch), ``before_optimizer_step``
(combining the task gradients and writing them back); for TACO also ``medians_and_checks``
(finiteness and the median importances) and ``rule`` (those plus the sweep over the parameters).
Uses step_time.py's batches and model; the methods take turns ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

from step_time import step_seconds

from multiret.mtl.base import GradientMethod
from multiret.mtl.taco import TACO
from multiret.mtl.taco_sweep import Sweep

PARTS = {
    (GradientMethod, "on_after_backward"): "after_backward",
    (GradientMethod, "on_before_optimizer_step"): "before_optimizer_step",
    (Sweep, "_ema_weights"): "medians_and_checks",
    (Sweep, "run"): "rule",
}


def timed(function: Callable, part: str, seconds: dict[tuple[str, str], list[float]]) -> Callable:
    """``function`` recording its wall time under ``(method name, part)``."""

    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        result = function(self, *args, **kwargs)
        method = self.name if isinstance(self, GradientMethod) else TACO.name  # the sweep runs inside TACO
        seconds[(method, part)].append(time.perf_counter() - start)
        return result

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-t5", help="tiny-t5 (default), minilm, or a local T5 folder")
    parser.add_argument("--methods", default="naive,taco", help="comma-separated methods (conf/method/*.yaml)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="times every method is run, taking turns")
    args = parser.parse_args()
    seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (owner, name), part in PARTS.items():
        setattr(owner, name, timed(getattr(owner, name), part, seconds))
    methods = args.methods.split(",")
    steps = step_seconds(args.model, methods, steps=args.steps, warmup=args.warmup, rounds=args.rounds)
    for method, values in steps.items():
        seconds[(method, "step")] = values
    result: dict[str, dict[str, float]] = {method: {} for method in methods}
    for (method, part), values in sorted(seconds.items()):
        if method in result:
            result[method][part] = round(1e3 * statistics.median(values), 2)
            print(f"{method} {part}: median over {len(values)} calls", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
