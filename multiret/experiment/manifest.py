"""The reproducibility manifest every run writes beside its checkpoints."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from multiret.atomic import atomic_write_text
from multiret.index.faiss_build import faiss_build, installed_versions

PACKAGES = ("multiret", "torch", "lightning", "transformers", "tokenizers", "hydra-core", "omegaconf",
            "bm25s", "numpy", "wandb")
LARGE_FILE = 1 << 30


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 16 MiB chunks (with a progress bar for files over 1 GiB)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                         disable=size < LARGE_FILE) as bar:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def git_state(directory: Path) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding ``directory``; nulls outside a git checkout."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str]:
    return installed_versions(PACKAGES)


def write_manifest(out_dir: Path, data_files: Iterable[Path], seed: int, argv: list[str] | None = None,
                   passages: dict[str, Any] | None = None) -> Path:
    """Write ``manifest.json``: git state, package versions, the FAISS build, data-file hashes, seed,
    command line, and how passages became model input (``passages``: the template and the file layout).

    The resolved config sits beside it as ``config.yaml``.
    """
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": argv if argv is not None else sys.argv,
        "seed": seed,
        "git": git_state(Path(__file__).resolve().parent),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "faiss": faiss_build(),
        "data_sha256": {str(path): sha256_file(path) for path in sorted(set(data_files))},
        "passages": passages,
        "config": "config.yaml",
    }
    path = out_dir / "manifest.json"
    atomic_write_text(path, json.dumps(manifest, indent=2))
    return path


def add_to_manifest(out_dir: Path, **fields: Any) -> None:
    """Add what a run learns after it started (the validation pool, the evaluated checkpoint) to its ``manifest.json``."""
    path = out_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    atomic_write_text(path, json.dumps(manifest, indent=2))
