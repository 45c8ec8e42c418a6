"""Streamed atomic outputs and line counting for the prepare steps."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[TextIO]:
    """Write a text file line by line through a temporary file renamed into place on success.

    Unlike :func:`multiret.data.jsonl.atomic_write_text` nothing is held in memory, so a
    multi-gigabyte output streams; an exception leaves no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def count_records(path: str | os.PathLike[str]) -> int:
    """Number of non-blank lines of a JSON-lines file (for progress totals and down-sampling)."""
    with Path(path).open("rb") as handle:
        return sum(1 for line in handle if line.strip())
