"""Closing the process group of a worker that ``ddp_spawn`` started, before the worker exits."""

from __future__ import annotations

import multiprocessing

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class CloseSpawnedProcessGroup(Callback):
    """In a worker process started by ``trainer.strategy=ddp_spawn``, wait for the other workers and
    destroy the process group when the trainer tears down.

    Lightning leaves a gloo group open in such a worker. A worker that then exits while its
    group's threads are still up can abort ("terminate called without an active exception",
    SIGABRT), which fails the whole run after its work is done. The worker runs nothing
    collective after the trainer returns, so closing the group here is safe. Processes that
    are not multiprocessing children (``trainer=ddp`` starts one script per device and keeps
    one group across several trainers) are left alone.
    """

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if multiprocessing.parent_process() is None or not dist.is_available() or not dist.is_initialized():
            return
        dist.barrier()
        dist.destroy_process_group()
