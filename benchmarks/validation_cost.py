"""What validation while training adds to the demo's training: one short run timing its steps and its validations.

    python benchmarks/validation_cost.py                   # the demo's TACO run (vital, MiniLM), 6 steps, validating every 3
    python benchmarks/validation_cost.py --steps 50 --every 25 --experiment vital_naive

Trains the demo's configuration (``multiret demo``'s overrides, ``stages=[train]``, CSV logs only)
for ``--steps`` steps with ``trainer.val_check_interval=--every``, timing every optimizer step
(a callback added through the config) and every validation (the ``time/validation_seconds`` it
logs). Both are measured in the same process, so a busy machine slows them alike. Prints one
JSON object: the median step and validation seconds, and the share validation adds to the
demo's training (``--demo-steps`` steps, validating at step 0, every ``--demo-every`` steps and
at the end): validations x median validation / (steps x median step).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

from multiret.eval.dev_validation import SECONDS
from multiret.experiment.demo import DEMO_OVERRIDES, compose_run
from multiret.experiment.run import run


class StepTimer(L.Callback):
    """Writes the wall seconds of every optimizer step without a validation (batch start to batch end) to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seconds: list[float] = []
        self._began = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._began = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step % trainer.val_check_interval and step < trainer.max_steps:  # DevValidation's hook ran first on the others
            self.seconds.append(time.perf_counter() - self._began)
            self.path.write_text(json.dumps(self.seconds))


def validation_seconds(out: Path) -> list[float]:
    """Every validation's logged duration (step 0, each interval, the end)."""
    with open(out / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return [float(row[SECONDS]) for row in csv.DictReader(f) if row.get(SECONDS)]


def demo_validations(steps: int, every: int) -> int:
    """Validations of a run of ``steps`` steps: step 0, every ``every`` steps, and the last step."""
    return 1 + steps // every + (steps % every != 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="vital_taco", help="a conf/experiment run of the demo")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of the measured run (some without validation)")
    parser.add_argument("--every", type=int, default=3, help="its trainer.val_check_interval")
    parser.add_argument("--demo-steps", type=int, default=50, help="the demo's steps (DEMO_OVERRIDES)")
    parser.add_argument("--demo-every", type=int, default=None, help="the interval projected (default: conf/trainer's)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="validation-cost-"))
    steps_file = out / "step_seconds.json"
    cfg = compose_run(args.experiment, out, "validation-cost", [
        *DEMO_OVERRIDES, "stages=[train]", "logger=csv", f"trainer.max_steps={args.steps}",
        "trainer.enable_progress_bar=false", "callbacks.progress_lines=null",  # standard output holds only the JSON
        f"trainer.val_check_interval={args.every}", "+callbacks.step_timer._target_=validation_cost.StepTimer",
        f"+callbacks.step_timer.path={steps_file}", *args.overrides])
    demo_every = args.demo_every or int(compose_run(args.experiment, out, "validation-cost", []).trainer.val_check_interval)
    began = time.perf_counter()
    run(cfg)
    print(f"measured run: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    step = statistics.median(json.loads(steps_file.read_text()))
    validations = validation_seconds(out)
    validation = statistics.median(validations)
    count = demo_validations(args.demo_steps, demo_every)
    print(json.dumps({
        "experiment": args.experiment, "measured_steps": args.steps, "measured_validations": len(validations),
        "median_step_seconds": step, "median_validation_seconds": validation,
        "validation_over_step": validation / step,
        "demo": {"steps": args.demo_steps, "val_check_interval": demo_every, "validations": count,
                 "validation_share_of_training": count * validation / (args.demo_steps * step)},
        "pool": json.loads((out / "manifest.json").read_text())["validation"]["tasks"],
    }, indent=2))


if __name__ == "__main__":
    main()
