"""Checkpoints: a crafted file runs no code, a broken one is named before any work, a kill never breaks last.ckpt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from multiret.experiment.analyze import checkpoint_importance
from multiret.experiment.checkpoint import FinalStepCheckpoint
from multiret.experiment.run import run
from multiret.model.loading import CheckpointError

from helpers import tiny_config


class Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture()
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint whose loading with weights_only=False would create a file, and that file's path."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {}, "callbacks": {}, "payload": Payload(marker)}, path)
    return path, marker


def assert_one_line_refusal(error: pytest.ExceptionInfo, path: Path, marker: Path) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "refused" in message and "open" in message
    assert not marker.exists()


@pytest.mark.parametrize("settings", [
    ["stages=[index,evaluate]", "ckpt_path={ckpt}"],  # evaluate a checkpoint's weights
    ["stages=[train]", "init_from={ckpt}"],  # start training from its weights
    ["stages=[train]", "ckpt_path={ckpt}"],  # resume training
], ids=["evaluate", "init_from", "resume"])
def test_a_crafted_checkpoint_runs_no_code_before_any_work(tmp_path, crafted, tiny_t5_dir, kilt_dir, kilt_tasks, settings):
    path, marker = crafted
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as error:
        run(tiny_config(out, tiny_t5_dir, kilt_dir, kilt_tasks, *(s.format(ckpt=path) for s in settings)))
    assert_one_line_refusal(error, path, marker)
    assert not (out / "config.yaml").exists()  # refused before the data and the model were built


def test_lightning_resume_reads_through_the_safe_loader(tmp_path, crafted):
    path, marker = crafted
    trainer = L.Trainer(max_steps=1, callbacks=[FinalStepCheckpoint(dirpath=tmp_path / "ckpt")], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(CheckpointError) as error:
        trainer.fit(BoringModel(), ckpt_path=path)
    assert_one_line_refusal(error, path, marker)


def test_specialization_refuses_a_crafted_checkpoint(crafted):
    path, marker = crafted
    with pytest.raises(CheckpointError) as error:
        checkpoint_importance(path, steps=1)
    assert_one_line_refusal(error, path, marker)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_broken_resume_checkpoint_is_named_with_the_newest_intact_one(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, damage):
    folder = tmp_path / "old" / "checkpoints"
    folder.mkdir(parents=True)
    for age, name in enumerate(["step000003.ckpt", "last.ckpt", "step000002.ckpt", "step000001.ckpt"]):
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 3 - age}, folder / name)
        os.utime(folder / name, (1_000_000 - age, 1_000_000 - age))  # step000003 is the newest
    for broken in (folder / "last.ckpt", folder / "step000003.ckpt"):
        data = broken.read_bytes()
        broken.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as error:
        run(tiny_config(out, tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[train]", f"ckpt_path={folder / 'last.ckpt'}"))
    message = str(error.value)
    assert "\n" not in message and str(folder / "last.ckpt") in message
    assert "empty, truncated" in message and f"ckpt_path={folder / 'step000002.ckpt'}" in message
    assert not (out / "config.yaml").exists()


# Trains a BoringModel for 2 steps, saving last.ckpt after each. Once step 1's last.ckpt exists, the
# process kills itself (SIGKILL) just before a rename onto it ("rename"), or, from that rename on,
# may write at most 4 KiB more to any file ("copy": a copy over last.ckpt then stops part-way, as a
# kill -9 during it would leave it).
KILLED_WHILE_SAVING = """
import os, resource, signal, sys
from pathlib import Path
import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel
from multiret.experiment.checkpoint import FinalStepCheckpoint

folder, point = Path(sys.argv[1]), sys.argv[2]
last = folder / "last.ckpt"

def kill_while_replacing(event, args):
    if event != "os.rename" or Path(args[1]) != last or not last.exists():
        return
    if point == "rename":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

sys.addaudithook(kill_while_replacing)
checkpoint = FinalStepCheckpoint(dirpath=folder, save_top_k=0, save_last=True, every_n_train_steps=1)
L.Trainer(max_steps=2, callbacks=[checkpoint], logger=False, enable_progress_bar=False, enable_model_summary=False,
          accelerator="cpu").fit(BoringModel())
"""


@pytest.fixture()
def other_filesystem_tmpdir(tmp_path: Path):
    """A $TMPDIR on another filesystem than the checkpoints where one is available (Lightning then copies instead of renaming)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        folder = Path(tempfile.mkdtemp(dir=shm))
        yield folder
        shutil.rmtree(folder)
    else:
        yield tmp_path / "tmp"


@pytest.mark.parametrize("point", ["rename", "copy"])
def test_last_ckpt_survives_a_kill_while_it_is_replaced(tmp_path, other_filesystem_tmpdir, point):
    folder = tmp_path / "checkpoints"
    other_filesystem_tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(other_filesystem_tmpdir)}
    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, str(folder), point], env=env, capture_output=True, text=True)
    checkpoint = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    if point == "copy":
        assert done.returncode == 0, done.stderr[-2000:]  # the rename wrote nothing, so the size limit never bit
        assert checkpoint["global_step"] == 2
    else:
        assert done.returncode == -9, done.stderr[-2000:]  # it was killed while replacing last.ckpt
        assert checkpoint["global_step"] == 1
