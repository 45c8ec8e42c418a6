"""Reading the multi-task DPR retriever files the TACO reference trains KILT on, streamed.

Each file (``<name>-{train,dev}-multikilt.json``, or ``.json.gz``) is ONE JSON array of items
``{question, answers, positive_ctxs, negative_ctxs, hard_negative_ctxs}`` whose contexts carry a
``psg_id``: the row id in KILT's passage split (psgs_w100.tsv). T-REx's file is several GB, so
items are parsed one at a time (ijson): memory holds one item, whatever the file's size.
Every fault (malformed JSON, a gzip cut short, another layout) is one :class:`DataFormatError`
naming the file and the item.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ijson

from multiret.data.gzipped import STREAM_ERRORS, open_binary, stream_fault
from multiret.data.jsonl import DataFormatError

# multiret's task name → the name in the reference's downloads (``zeroshot`` is KILT's structured_zeroshot, zsRE)
DPR_NAMES = {"nq": "nq", "triviaqa": "triviaqa", "hotpotqa": "hotpotqa", "wow": "wow", "trex": "trex",
             "structured_zeroshot": "zeroshot", "fever": "fever", "aidayago2": "aidayago2"}
SUFFIXES = (".json.gz", ".json")
READ_ERRORS = (ijson.JSONError, *STREAM_ERRORS, UnicodeDecodeError)


@dataclass(frozen=True)
class DprItem:
    """What training needs of one item: the question and the ``psg_id`` (as a string) of each given context."""

    question: str
    positives: list[str]
    hard_negatives: list[str]


def dpr_file(folder: Path, task: str, split: str) -> Path | None:
    """The task's file for ``split`` in ``folder`` (gzip or plain), or None if neither is there."""
    for suffix in SUFFIXES:
        path = folder / f"{DPR_NAMES[task]}-{split}-multikilt{suffix}"
        if path.is_file():
            return path
    return None


def _check_array(handle: IO[bytes], path: Path) -> None:
    """Fail unless the file's first non-blank character opens a JSON array (the published layout)."""
    first = b""
    while not first:
        chunk = handle.read(4096)
        if not chunk:
            raise DataFormatError(f"{path}: the file is empty; expected one JSON array of DPR items")
        first = chunk.lstrip()[:1]
    if first != b"[":
        raise DataFormatError(f"{path}: expected one JSON array of DPR items (the reference's multikilt layout), "
                              f"but the file starts with {first.decode('latin-1')!r}; is it a JSON-lines file?")


def iter_dpr_items(path: Path) -> Iterator[tuple[int, DprItem]]:
    """Yield ``(index, item)`` for every item of the array, in file order (index from 0)."""
    index = 0  # of the item being parsed, named by an error
    try:
        with open_binary(path) as handle:
            _check_array(handle, path)
            handle.seek(0)
            for raw in ijson.items(handle, "item", use_float=True):
                yield index, _item(raw, path, index)
                index += 1
    except READ_ERRORS as error:
        raise DataFormatError(f"{path}: item {index}: {_read_fault(error)}") from None


def _read_fault(error: Exception) -> str:
    if isinstance(error, STREAM_ERRORS):
        return stream_fault(error)
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8; save the file as UTF-8"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if "premature EOF" in first_line:
        return "the JSON ends before the array closes: the file is cut short, download it again"
    return f"invalid JSON ({first_line})"


def _psg_ids(raw: dict[str, Any], key: str, path: Path, index: int) -> list[str]:
    contexts = raw.get(key, [])
    if not isinstance(contexts, list):
        raise DataFormatError(f"{path}: item {index}: {key!r} must be a list of contexts")
    ids = []
    for position, ctx in enumerate(contexts):
        psg_id = ctx.get("psg_id") if isinstance(ctx, dict) else None
        if isinstance(psg_id, bool) or not isinstance(psg_id, (int, str)) or not str(psg_id).strip():
            raise DataFormatError(f"{path}: item {index}: {key}[{position}] needs a 'psg_id' (an integer or a string)")
        ids.append(str(psg_id).strip())
    return ids


def _item(raw: Any, path: Path, index: int) -> DprItem:
    if not isinstance(raw, dict) or not isinstance(raw.get("question"), str):
        raise DataFormatError(f"{path}: item {index}: expected an object with a string 'question' (a DPR item)")
    return DprItem(raw["question"], _psg_ids(raw, "positive_ctxs", path, index), _psg_ids(raw, "hard_negative_ctxs", path, index))
