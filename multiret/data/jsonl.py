"""JSON-lines reading and writing with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from multiret.atomic import atomic_file
from multiret.data.gzipped import read_lines
from multiret.errors import DataFormatError


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of a JSON-lines file (gzipped if named ``.gz``).

    Fails with :class:`DataFormatError` naming ``file:line`` on malformed JSON, on bytes that
    are not UTF-8 or on a line that is not a JSON object, so a user can fix the exact record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a JSON-lines file)")
    yield from parse_jsonl(read_lines(path), str(path))


def parse_jsonl(lines: Iterable[bytes], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """:func:`iter_jsonl` over raw lines (a file, a pipe, stdin); ``name`` is the file named in errors."""
    for line_number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataFormatError(
                f"{name}:{line_number}: not UTF-8 (byte {raw[error.start]:#04x} at byte {error.start + 1} of the line); "
                "save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            reason = error.msg.removesuffix(" at")  # "Unterminated string starting at" would read "at at column"
            raise DataFormatError(
                f"{name}:{line_number}: invalid JSON ({reason} at column {error.colno}); "
                "expected one JSON object per line"
            ) from error
        if not isinstance(record, dict):
            raise DataFormatError(f"{name}:{line_number}: expected a JSON object, got {type(record).__name__}")
        yield line_number, record


def read_json(path: str | os.PathLike[str], fix: str = "re-run the job that wrote it") -> Any:
    """One JSON document (a run's ``eval/metrics.json``, ...): a truncated or broken file fails naming it, its line and ``fix``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        reason = error.msg.removesuffix(" at")
        raise DataFormatError(f"{os.fspath(path)}:{error.lineno}: invalid JSON ({reason} at column {error.colno}; "
                              f"truncated?); {fix}") from error


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a whole JSON-lines file (see :func:`iter_jsonl` for the error contract)."""
    return [record for _, record in iter_jsonl(path)]


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """Write records as JSON lines, atomically and streamed."""
    with atomic_file(path) as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
