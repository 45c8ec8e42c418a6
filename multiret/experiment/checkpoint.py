"""Checkpointing that never loses the final step, never leaves a half-written file, and never runs code on load."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from multiret.atomic import atomic_file, remove_temporaries
from multiret.errors import UserError
from multiret.model.loading import load_checkpoint


class FinalStepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that ``last.ckpt`` always holds the final training step.

    Lightning writes ``last.ckpt`` at the end of training only if no ``last.ckpt`` was written
    before, so with ``every_n_train_steps=1000`` a 2,500-step run would end with step 2,000 in
    ``last.ckpt``. Here the final step is saved whenever it was not a periodic save step.
    The trainer's default checkpoint I/O is replaced by :class:`SafeCheckpointIO` (a
    ``plugins`` entry of another kind is left as it is), and the temporary files of a save that
    was killed (``.last.ckpt.<random>.tmp.ckpt``) are removed before training writes again.
    """

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, every_n_train_steps=every_n_train_steps, **kwargs)
        self.periodic_steps = every_n_train_steps or 0

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()  # before fit(ckpt_path=...) restores: the setup hook runs first
        if stage == "fit" and trainer.is_global_zero and self.dirpath is not None:
            remove_temporaries(Path(self.dirpath))
        super().setup(trainer, pl_module, stage)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved_this_step = self.periodic_steps > 0 and trainer.global_step % self.periodic_steps == 0
        if self.save_last and not saved_this_step and self.dirpath is not None:
            trainer.save_checkpoint(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}", self.save_weights_only)
            return
        super().on_train_end(trainer, pl_module)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O for local folders, written atomically and read with ``weights_only=True``.

    Lightning stages a checkpoint in ``$TMPDIR`` and moves it into place; across filesystems the
    move truncates the old ``last.ckpt`` and copies, so a kill during the copy leaves a short or
    empty file. Here a checkpoint is written beside its final name, synced and renamed, so a
    kill at any point leaves the old checkpoint or the new one. Resuming (``fit(ckpt_path=...)``)
    reads through :func:`multiret.model.loading.load_checkpoint`, which runs no code from the file.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (checkpoints go to a local folder)")
        save_atomically(checkpoint, Path(path))

    @override
    def load_checkpoint(self, path: str | os.PathLike[str], map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path)


def save_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in ``path``'s folder, fsync, then rename over ``path``; a full disk is one line."""
    try:
        with atomic_file(path, "wb", durable=True) as handle:
            torch.save(checkpoint, handle)
    except (OSError, RuntimeError) as error:
        if not _disk_full(error):
            raise
        raise UserError(f"cannot save the checkpoint {path}: no space left on device; free space there, or write checkpoints "
                        "to another disk (callbacks.model_checkpoint.dirpath=...)") from error


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` or what it was raised from is ENOSPC (torch's zip writer raises its own error from the write's)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    return False


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for the best validation score (``checkpoints/best.ckpt``), step 0 included.

    Lightning never saves at step 0 (``_last_global_step_saved`` starts there), but validation
    scores the untrained model there, and when no later step beats it, the best checkpoint is
    that model: without this, ``best.ckpt`` would be missing while the logged argmax is step 0.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_global_step_saved = -1


def best_checkpoint(trainer: L.Trainer) -> BestCheckpoint | None:
    """The trainer's best-score checkpoint callback, if it has one that saved a file."""
    found = [callback for callback in trainer.checkpoint_callbacks if isinstance(callback, BestCheckpoint)]
    return found[0] if found and found[0].best_model_path else None
