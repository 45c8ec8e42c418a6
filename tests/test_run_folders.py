"""Run folders are never shared: same-second runs, SLURM array tasks and multirun jobs each get their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from multiret.experiment import run_folders
from multiret.experiment.run import CONFIG_DIR

FROZEN = datetime(2026, 1, 2, 3, 4, 5, 678901)

# The real conf/ through hydra.main, with Hydra's and our clock frozen, so that every run starts "in the same second".
APP = """
import json, sys
from datetime import datetime
import hydra
import hydra.core.utils
from hydra.core.global_hydra import GlobalHydra
from multiret.experiment import run_folders

run_folders.register_resolver()  # as importing multiret.experiment.run does (tested below); this skips importing torch

class Frozen(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime(2026, 1, 2, 3, 4, 5, 678901)

hydra.core.utils.datetime = Frozen
run_folders.datetime = Frozen
seen = []

@hydra.main(version_base="1.3", config_path=sys.argv[2], config_name="train")
def app(cfg):
    seen.append(cfg.paths.output_dir)

for argv in json.loads(sys.argv[1]):
    sys.argv = ["app", *argv]
    app()
    GlobalHydra.instance().clear()
print(json.dumps(seen))
"""


def start_runs(tmp_path: Path, *argvs: list[str], **env: str) -> list[Path]:
    """Output folders of Hydra runs started one after the other in one process with a frozen clock."""
    environment = {**os.environ, "MULTIRET_LOGS": str(tmp_path / "logs"), **env}
    done = subprocess.run([sys.executable, "-c", APP, json.dumps(argvs), CONFIG_DIR], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, check=True)
    return [Path(p) for p in json.loads(done.stdout.strip().splitlines()[-1])]


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    first, second = start_runs(tmp_path, [], [])
    assert first != second
    assert first.parent == second.parent == tmp_path / "logs" / "train" / "runs"
    assert first.name.startswith("2026-01-02_03-04-05.678901_") and first.is_dir() and second.is_dir()
    assert not (tmp_path / "logs" / "train" / "multiruns").exists()  # a single run makes no multirun folder


def test_slurm_array_tasks_are_named_by_job_and_task_and_never_collide(tmp_path):
    slurm = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7", "SLURM_JOB_ID": "4249"}
    first, second = start_runs(tmp_path, [], [], **slurm)  # the same task started twice in the same microsecond
    assert first != second
    assert first.name.startswith("2026-01-02_03-04-05.678901_4242_7-")


def test_multirun_jobs_share_one_new_sweep_folder_with_one_subfolder_each(tmp_path):
    jobs = start_runs(tmp_path, ["-m", "seed=1,2"], ["-m", "seed=1,2"])
    sweeps = sorted((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 2  # two multiruns started in the same second
    assert sorted(jobs) == sorted(sweep / job for sweep in sweeps for job in ("0", "1"))
    assert not (tmp_path / "logs" / "train" / "runs").exists()


def test_an_explicit_folder_is_used_as_given(tmp_path):
    existing = tmp_path / "resumed"
    existing.mkdir()
    by_hydra, by_paths = start_runs(tmp_path, [f"hydra.run.dir={existing}"], [f"paths.output_dir={existing}"])
    assert by_hydra == by_paths == existing
    assert len(list((tmp_path / "logs" / "train" / "runs").iterdir())) == 1  # Hydra's own folder for the second run only


def test_a_taken_name_is_retried(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return FROZEN

    parts = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(run_folders, "datetime", Frozen)
    monkeypatch.setattr(run_folders.secrets, "token_hex", lambda n: next(parts))
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    first = run_folders.unique_run_dir(str(tmp_path))
    second = run_folders.unique_run_dir(str(tmp_path))
    assert Path(first).name == "2026-01-02_03-04-05.678901_aaaa"
    assert Path(second).name == "2026-01-02_03-04-05.678901_bbbb"


def test_the_resolver_is_registered_by_the_hydra_app_module():
    assert OmegaConf.has_resolver(run_folders.RESOLVER)
