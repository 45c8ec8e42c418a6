"""Exactly one FAISS build: two are refused with the fix, none gets the install hint, the manifest names the one that ran."""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import faiss
import pytest

from multiret.experiment.manifest import write_manifest
from multiret.index.faiss_build import import_faiss, installed_faiss_distributions

REPO = Path(__file__).resolve().parents[1]


def _fake_distribution(folder: Path, name: str, version: str) -> None:
    """What pip leaves on the path for an installed distribution, as importlib.metadata reads it."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")


def test_this_environment_has_one_build():
    assert list(installed_faiss_distributions()) == ["faiss-cpu"]


def test_two_builds_are_refused_with_the_uninstall_command(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "faiss-gpu", "1.15.1")
    monkeypatch.syspath_prepend(str(tmp_path))
    cpu = metadata.version("faiss-cpu")
    with pytest.raises(ImportError, match=rf"several FAISS builds are installed \(faiss-cpu=={cpu}, faiss-gpu==1.15.1\).*"
                                          r"pip uninstall -y faiss-cpu faiss-gpu, then pip install \"multiret\[cpu\]\""):
        import_faiss()


def test_multiret_train_stops_before_any_work_when_two_builds_are_installed(tmp_path):
    _fake_distribution(tmp_path / "site", "faiss-gpu-cu12", "1.14.1")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{REPO}")
    done = subprocess.run([sys.executable, "-m", "multiret.cli", "train", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "pip uninstall -y faiss-cpu faiss-gpu-cu12" in done.stderr
    assert not (tmp_path / "run").exists()


def test_missing_faiss_names_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # what a Python without FAISS does on `import faiss`
    with pytest.raises(ModuleNotFoundError, match=r'FAISS is not installed; pip install "multiret\[cpu\]" .* "multiret\[gpu\]"'):
        import_faiss()


def test_manifest_records_the_faiss_build_that_ran(tmp_path):
    manifest = json.loads(write_manifest(tmp_path, [], seed=1, argv=["x"]).read_text())
    assert manifest["faiss"] == {"distribution": "faiss-cpu", "version": faiss.__version__,
                                 "gpu_support": hasattr(faiss, "StandardGpuResources")}
