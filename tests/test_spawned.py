"""A worker started by ddp_spawn closes its gloo group at teardown; a trainer=ddp process keeps its group."""

import socket

import lightning as L
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multiret.experiment.spawned import CloseSpawnedProcessGroup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int) -> None:
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    total = torch.ones(4)
    dist.all_reduce(total)
    assert total.tolist() == [2.0] * 4
    CloseSpawnedProcessGroup().teardown(trainer, None, "fit")
    assert not dist.is_initialized()


def test_spawned_workers_close_their_group():
    mp.spawn(worker, args=(free_port(),), nprocs=2)  # raises if a worker fails or aborts at exit


def test_a_process_started_as_a_script_keeps_its_group(tmp_path):
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        CloseSpawnedProcessGroup().teardown(trainer, None, "fit")
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
