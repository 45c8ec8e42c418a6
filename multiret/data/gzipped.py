"""Data files read the same whether plain or gzipped (``<name>.gz``), as downloads and mirrors ship them.

A gzip stream that ends early (an interrupted download) or is damaged only shows once the
reader gets there, so the error names the file and the line it reached.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from multiret.errors import DataFormatError

GZIP = ".gz"
STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # what reading a cut, damaged or mislabelled gzip raises


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.name.endswith(GZIP) else path.open("rb")


def stream_fault(error: Exception) -> str:
    """What a :data:`STREAM_ERRORS` error means for the user, and the fix."""
    if isinstance(error, gzip.BadGzipFile):
        return f"not a gzip file ({error}); a plain file's name must not end in {GZIP}"
    return f"the gzip stream is cut short or damaged ({error}); download the file again"


def read_lines(path: Path) -> Iterator[bytes]:
    """The file's raw lines (plain or gzipped); a faulty gzip stream fails naming the file and the line it reached."""
    line = 0
    try:
        with open_binary(path) as handle:
            for raw in handle:
                line += 1
                yield raw
    except STREAM_ERRORS as error:
        raise DataFormatError(f"{path}:{line + 1}: {stream_fault(error)}") from None  # the line being read


def plain_or_gzipped(path: Path) -> Path:
    """``path`` or ``path.gz``, whichever exists (``path`` when neither does); both there is an error, as either could be meant."""
    zipped = path.with_name(path.name + GZIP)
    if not zipped.is_file():
        return path
    if path.is_file():
        raise DataFormatError(f"{path.parent}: holds both {path.name} and {zipped.name}; keep one of them")
    return zipped
