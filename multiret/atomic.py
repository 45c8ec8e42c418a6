"""Atomic outputs: every file or folder multiret writes appears whole or not at all.

A writer works on a temporary sibling (same folder, so the final rename stays on one file
system) that is renamed over the target only when the writing succeeded; on an error the
temporary is removed and the error raised as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike[str], durable: bool = False) -> Iterator[Path]:
    """A temporary file name beside ``path`` (same suffix, for writers that infer the format from it), renamed
    over ``path`` when the block succeeds; ``durable`` also syncs the file and the rename to the disk."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        publish(tmp, path, durable)
    except BaseException as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as cleanup:  # the write's own error is the one to report
            error.add_note(f"the temporary file {tmp} could not be removed either: {cleanup}")
        raise


TEMPORARY_PATTERN = ".*.tmp*"  # every name temporary_beside gives (.<name>.<random>.tmp<suffix>), and the older .<name>.tmp


def remove_temporaries(folder: Path) -> None:
    """Remove the temporaries a killed writer left in ``folder`` (run before writing there again, never during)."""
    if folder.is_dir():
        for tmp in folder.glob(TEMPORARY_PATTERN):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


def temporary_beside(path: Path) -> Path:
    """An empty temporary file beside ``path`` (same suffix), a name no other writer gets, for :func:`publish`.

    For writes that outlive one block (a file filled over many calls); :func:`atomic_path` is both steps around a block.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    return Path(name)


def publish(tmp: Path, path: Path, durable: bool = False) -> None:
    """Rename the finished ``tmp`` over ``path``; ``durable`` also syncs the file and the rename to the disk."""
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
    if durable:
        _fsync(tmp, os.O_RDONLY)
    os.replace(tmp, path)
    if durable:
        _fsync(path.parent, os.O_RDONLY)  # the rename itself reaches the disk


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: Literal["w", "wb"] = "w", durable: bool = False) -> Iterator[IO[Any]]:
    """Write a file through a handle (``w``: UTF-8 text, ``wb``: bytes) that streams, so nothing is held in memory."""
    encoding = None if mode == "wb" else "utf-8"
    with atomic_path(path, durable) as tmp, tmp.open(mode, encoding=encoding) as handle:
        yield handle


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so readers never see half a file."""
    with atomic_file(path) as handle:
        handle.write(text)


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder ``<path>.tmp`` that replaces ``path`` (and whatever it held) when the block succeeds.

    The temporary folder has a fixed name: an interrupted build leaves it for the next one to clear.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
