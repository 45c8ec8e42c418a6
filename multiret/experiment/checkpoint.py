"""Checkpointing that never loses the final step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class FinalStepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that ``last.ckpt`` always holds the final training step.

    Lightning writes ``last.ckpt`` at the end of training only if no ``last.ckpt`` was written
    before, so with ``every_n_train_steps=1000`` a 2,500-step run would end with step 2,000 in
    ``last.ckpt``. Here the final step is saved whenever it was not a periodic save step.
    """

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, every_n_train_steps=every_n_train_steps, **kwargs)
        self.periodic_steps = every_n_train_steps or 0

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved_this_step = self.periodic_steps > 0 and trainer.global_step % self.periodic_steps == 0
        if self.save_last and not saved_this_step and self.dirpath is not None:
            trainer.save_checkpoint(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
            return
        super().on_train_end(trainer, pl_module)
