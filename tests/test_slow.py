"""Slow end-to-end runs on the real demo model and data (`make test-full`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def multiret(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multiret.cli", *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_cli_train_on_vital_with_minilm(tmp_path):
    done = multiret("train", "experiment=vital_taco", "debug=fast", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"vital-qa", "vital-el", "vital-clue"}
    assert metrics["vital-clue"]["Rprec"] > 0.5  # MiniLM finds most title-masked leads even after 3 steps


def test_task_specific_multirun_trains_one_model_per_task(tmp_path):
    done = multiret(
        "train", "-m", "experiment=vital_task_specific", "debug=fast", "stages=[train]",
        f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*/config.yaml"))
    assert [j.read_text().count("task_names:\n  - vital-") for j in jobs] == [1, 1, 1]


def test_cli_evaluate_bm25_and_zero_shot(tmp_path):
    for experiment in ("vital_bm25", "vital_zeroshot"):
        done = multiret("evaluate", f"experiment={experiment}", "debug=fast", f"hydra.run.dir={tmp_path}/{experiment}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((tmp_path / experiment / "eval" / "metrics.json").read_text())["vital-clue"]["Rprec"] > 0.5
