"""`pip install .` (not editable) into a fresh venv works from any directory: configs ship in the package.

The venv reuses this interpreter's installed dependencies through a .pth line (no network, no
second copy of torch), gets multiret itself from a real, isolated `pip install` of a copy of the
source tree, and runs its console script from a folder that holds no part of the repository.
"""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from multiret.data.jsonl import write_jsonl
from multiret.prepare.vital import BUILDER_VERSION

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "multiret", "conf")


def _run(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A venv holding a non-editable install of multiret, and the environment to run it in (no PYTHONPATH)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:  # a copy, so that the build leaves nothing in the checkout
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "installed-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MULTIRET_")}
    env["WANDB_MODE"] = "offline"
    done = _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", source,
                cwd=root, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    shutil.rmtree(source)  # nothing of the tree is left to fall back on
    return venv, env


def test_the_wheel_holds_the_configs_and_is_what_gets_imported(installed, tmp_path):
    venv, env = installed
    done = _run(venv / "bin" / "python", "-c", "import multiret, multiret.configs as c; print(multiret.__file__); print(c.CONFIG_DIR)",
                cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    module, config_dir = done.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(config_dir) == Path(module).parent / "conf"
    shipped = {p.relative_to(config_dir) for p in Path(config_dir).rglob("*.yaml")}
    assert shipped == {p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml")}


def test_three_training_steps_and_the_demo_from_another_directory(installed, tmp_path):
    venv, env = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = _run(venv / "bin" / "multiret", "train", "experiment=vital_taco", "debug=fast", cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = sorted(work.glob("logs/**/eval/metrics.json"))
    assert len(metrics) == 1 and set(json.loads(metrics[0].read_text())) == {"vital-qa", "vital-el", "vital-clue"}
    run = metrics[0].parents[1]
    assert "max_steps: 3" in (run / "config.yaml").read_text() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (work / ".cache" / f"vital-v{BUILDER_VERSION}" / "corpus.tsv").is_file()  # the benchmark is built under the working directory
    done = _run(venv / "bin" / "multiret", "demo", "--out", work / "demo", "debug=fast", cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(json.loads((work / "demo" / "results.json").read_text())["scores"]) == {"BM25", "zero-shot", "naive", "TACO"}


def test_prepare_kilt_from_another_directory(installed, tmp_path):
    venv, env = installed
    pages = {7: "the alps are a mountain range", 8: "the rhine is a river in europe"}
    rows = ["id\ttext\ttitle\twikipedia_id", *(f"{p}_0\t{text}\tPage {p}\t{p}" for p, text in pages.items())]
    (tmp_path / "passages.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    kilt = tmp_path / "kilt"
    for split in ("train", "dev"):
        write_jsonl(kilt / f"fever-{split}-kilt.jsonl", [
            {"id": f"{split}{p}", "input": f"claim about {text}",
             "output": [{"answer": "SUPPORTS", "provenance": [{"wikipedia_id": str(p)}]}]}
            for p, text in pages.items()])
    done = _run(venv / "bin" / "multiret", "prepare", "kilt", "--kilt-dir", kilt, "--passages", tmp_path / "passages.tsv",
                "--out", tmp_path / "prepared", "--tasks", "fever", "--bm25-top-k", "2", "--no-progress", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(json.loads((tmp_path / "prepared" / "prepare_report.json").read_text())["tasks"]) == {"fever"}
