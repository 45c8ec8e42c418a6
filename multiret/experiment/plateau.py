"""Where a validation curve stops rising: how the vital study sizes its step budget (``vital_study.sh --pilot``).

A curve has plateaued when its last quarter (the validations at or after three quarters of its
last step) stays within ``tolerance`` of its best score; its plateau step is then the first
validated step from which every later score does. A study trained for that many steps measures
its arms where they stop improving, not while they still rise at different speeds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from multiret.errors import UserError
from multiret.eval.curves import run_curve

TOLERANCE = 0.005  # R-precision; finer than one query of a 150-query pool (0.0067): see docs/study.md, the first pilot


def plateau_step(curve: Mapping[int, float], tolerance: float = TOLERANCE) -> int | None:
    """The first step from which every score is within ``tolerance`` of the best; None if the last quarter is not."""
    if not curve:
        return None
    steps = sorted(curve)
    best = max(curve.values())
    near = [curve[step] >= best - tolerance for step in steps]
    if not all(ok for step, ok in zip(steps, near) if step >= 0.75 * steps[-1]):
        return None
    first = len(steps)
    while first > 0 and near[first - 1]:
        first -= 1
    return steps[first]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multiret.experiment.plateau", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder whose CSV log holds validation scores (val/average/<metric>)")
    parser.add_argument("--metric", default="Rprec", help="the validation metric (default Rprec)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="how far below the best still counts as the plateau")
    args = parser.parse_args(argv)
    curve = run_curve(args.run, args.metric)
    if not curve:
        raise UserError(f"{args.run}: no val/average/{args.metric} in csv/version_*/metrics.csv; train it with validation "
                        "(trainer.val_check_interval) and logger=csv")
    print(" ".join(f"{step}:{value:.3f}" for step, value in sorted(curve.items())))
    step = plateau_step(curve, args.tolerance)
    if step is None:
        print(f"not plateaued: the last quarter of the curve is not within {args.tolerance} of its best "
              f"({max(curve.values()):.3f}); train the pilot longer")
        return 1
    print(f"plateau at step {step}: every later validation within {args.tolerance} of the best ({max(curve.values()):.3f})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
