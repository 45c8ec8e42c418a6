"""Closing the process group of a worker that ``ddp_spawn`` started, before the worker exits."""

from __future__ import annotations

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from typing_extensions import override


class CloseSpawnedProcessGroup(Callback):
    """In a worker process started by ``trainer.strategy=ddp_spawn`` (or another multiprocessing launch), wait
    for the other workers and destroy the process group when the trainer tears down.

    Lightning leaves a gloo group open in such a worker. A worker that then exits while its
    group's threads are still up can abort ("terminate called without an active exception",
    SIGABRT), which fails the whole run after its work is done. The worker runs nothing
    collective after the trainer returns, so closing the group here is safe. Under
    ``trainer=ddp`` (one script per device, one group kept across several trainers) nothing
    is done.
    """

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
            return
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
