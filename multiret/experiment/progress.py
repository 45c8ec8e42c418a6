"""Progress lines for logs: a cluster job or ``make demo > log`` shows how training goes without a terminal.

A progress bar redraws one terminal line, so a log file gets nothing useful from it for the whole
of training; this callback prints a plain line instead whenever standard output is not a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L

LOSS_PREFIX = "train/loss/"


class ProgressLines(L.Callback):
    """Every ``every_n_steps`` optimizer steps or ``every_seconds`` seconds (whichever comes first), and at the last step:
    the step, each task's loss, steps per second and the time left, on the first process.

    ``stream`` defaults to standard output; ``always`` prints even to a terminal.
    """

    def __init__(self, every_n_steps: int = 25, every_seconds: float = 60.0, always: bool = False,
                 stream: TextIO | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.every_seconds = every_seconds
        self.always = always
        self.stream = stream
        self._start = self._last = 0.0
        self._start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stream = self.stream or sys.stdout
        if not trainer.is_global_zero or (stream.isatty() and not self.always):
            return
        step, now = trainer.global_step, time.monotonic()
        if step % self.every_n_steps and now - self._last < self.every_seconds and step < trainer.max_steps:
            return
        self._last = now
        print(progress_line(step, trainer.max_steps, task_losses(trainer.callback_metrics),
                            (step - self._start_step) / max(now - self._start, 1e-9)), file=stream, flush=True)


def task_losses(metrics: dict[str, Any]) -> dict[str, float]:
    """Each task's last logged training loss, by task."""
    return {key[len(LOSS_PREFIX):]: float(value) for key, value in metrics.items() if key.startswith(LOSS_PREFIX)}


def progress_line(step: int, max_steps: int, losses: dict[str, float], steps_per_second: float) -> str:
    """``step 50/100 | loss qa 1.234 el 0.987 | 2.10 steps/s | 0:00:24 left``."""
    left = (max_steps - step) / steps_per_second if steps_per_second > 0 else float("inf")
    if left == float("inf"):
        remaining = "?"
    else:
        minutes, seconds = divmod(round(left), 60)
        remaining = f"{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}"  # hours past 24 for long runs
    loss = " | loss " + " ".join(f"{task} {value:.3f}" for task, value in losses.items()) if losses else ""
    return f"step {step}/{max_steps}{loss} | {steps_per_second:.2f} steps/s | {remaining} left"
