"""resume=true: a run folder that finished is skipped, an interrupted one continues bit for bit, another config is refused."""

import json

import lightning as L
import pytest
import torch

from multiret.errors import UserError
from multiret.experiment import stages
from multiret.experiment.run import run

from helpers import tiny_config


class Interrupt(L.Callback):
    """Stops a training after step 2 (its last.ckpt written), as a killed job would."""

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 2:
            raise RuntimeError("interrupted")


def test_interrupted_run_continues_and_finished_run_is_skipped(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, monkeypatch):
    straight = run(tiny_config(tmp_path / "straight", tiny_t5_dir, kilt_dir, kilt_tasks, "method=taco"))
    folder = tmp_path / "study" / "taco"
    cfg = tiny_config(folder, tiny_t5_dir, kilt_dir, kilt_tasks, "method=taco", "resume=true")
    shared = stages.instantiate_named
    with monkeypatch.context() as patch:
        patch.setattr(stages, "instantiate_named", lambda group: [*shared(group), Interrupt()] if group is cfg.callbacks else shared(group))
        with pytest.raises(RuntimeError, match="interrupted"):
            run(cfg)
    assert not (folder / "eval" / "metrics.json").exists()
    resumed = run(cfg)
    assert resumed == straight
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert b["global_step"] == 4
    assert json.loads((folder / "wall_seconds.json").read_text()).keys() == {"train", "index", "evaluate", "total"}
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    # finished: the scores come back from the folder without building anything
    monkeypatch.setattr(stages, "build", lambda cfg: pytest.fail("a finished run was run again"))
    assert run(cfg) == resumed
    assert json.loads((folder / "eval" / "metrics.json").read_text()).keys() == {"qa", "el"}


def test_resume_refuses_a_folder_of_another_config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    folder = tmp_path / "run"
    run(tiny_config(folder, tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[train]", "trainer.max_steps=2", "resume=true"))
    with pytest.raises(UserError, match=r"resume=true, but this folder ran another config \(-  max_steps: 2; \+  max_steps: 3\)"):
        run(tiny_config(folder, tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[train]", "trainer.max_steps=3", "resume=true"))
