"""Writing a passage store (read by :class:`multiret.data.store.PassageStore`) from passages streamed in file order.

``multiret prepare kilt`` writes one from a passage TSV (:mod:`multiret.prepare.passages`) and
``data=beir`` one per dataset corpus (:mod:`multiret.data.beir_store`). Peak memory is a chunk of
rows plus the sorts of the two ``int64`` key arrays, whatever the corpus's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from multiret.atomic import atomic_folder, atomic_write_text
from multiret.data.passage_files import PassageRow
from multiret.data.store import CHUNK_ROWS, FORMAT, ID_PAGES, META, StoredStrings, id_hash, map_array
from multiret.errors import DataFormatError


class _ColumnWriter:
    """Appends strings to ``<name>.bin`` and their end offsets to ``<name>.off`` (which starts with 0)."""

    def __init__(self, folder: Path, name: str) -> None:
        self._blob = (folder / f"{name}.bin").open("wb")
        self._offsets = (folder / f"{name}.off").open("wb")
        self._end = 0
        self._pending: list[int] = [0]

    def add(self, value: bytes) -> None:
        self._blob.write(value)
        self._end += len(value)
        self._pending.append(self._end)

    def flush(self) -> None:
        np.asarray(self._pending, dtype=np.int64).tofile(self._offsets)
        self._pending = []

    def close(self) -> None:
        self.flush()
        self._blob.close()
        self._offsets.close()


def write_passage_store(rows: Iterable[PassageRow], out: Path, source: Path, page_key: str, meta: dict[str, Any],
                        show_progress: bool = True, unit: str = "passage") -> dict[str, Any]:
    """Stream ``rows`` (read from ``source``, named by errors) into the store folder ``out``.

    Writes into ``<out>.tmp`` and renames it to ``out`` when complete, so an interrupted build
    leaves no half store. Pages are keyed by ``page_key``: ``wikipedia_id`` (numeric, else an
    error naming ``file:line``), ``title`` (a hash of the title) or :data:`ID_PAGES` (each
    passage its own page). A duplicate id fails naming both lines, calling the rows ``unit``.
    Returns the store's metadata: ``meta`` plus the format, source, page key and counts.
    """
    with atomic_folder(out) as tmp:
        return _write_store(rows, tmp, source, page_key, meta, show_progress, unit)


def _page_number(row: PassageRow, page_key: str, source: Path) -> int:
    """What ``page.i64`` holds for the row's page (see :meth:`PassageStore._page_number`)."""
    if page_key == ID_PAGES:
        return id_hash(row.id)
    if page_key == "title":
        return id_hash(row.page)
    try:
        return int(row.page)
    except ValueError:
        raise DataFormatError(f"{source}:{row.line}: wikipedia_id {row.page!r} is not an integer (KILT page ids are numeric)") from None


def _write_store(rows: Iterable[PassageRow], tmp: Path, source: Path, page_key: str, meta: dict[str, Any],
                 show_progress: bool, unit: str) -> dict[str, Any]:
    """The store's files written into ``tmp``; returns its metadata."""
    columns = {name: _ColumnWriter(tmp, name) for name in ("id", "text", "title")}
    keys: dict[str, list[int]] = {"page": [], "id_hash": [], "line": []}
    files = {name: (tmp / f"{name}.i64").open("wb") for name in keys}
    count = 0
    with tqdm(rows, unit=unit, desc="passage store", disable=not show_progress) as passages:
        for row in passages:
            keys["page"].append(_page_number(row, page_key, source))
            for name, value in (("id", row.id), ("text", row.text), ("title", row.title)):
                columns[name].add(value.encode("utf-8"))
            keys["id_hash"].append(id_hash(row.id))
            keys["line"].append(row.line)
            count += 1
            if count % CHUNK_ROWS == 0:
                _flush(keys, files, columns)
    _flush(keys, files, columns)
    for handle in files.values():
        handle.close()
    for column in columns.values():
        column.close()
    if count == 0:
        raise DataFormatError(f"{source}: no {unit}s in the file")
    num_pages = _write_indexes(tmp, source, unit)
    meta = {"format": FORMAT, "source": str(source), **meta, "page_key": page_key, "passages": count, "pages": num_pages}
    meta["bytes"] = sum(p.stat().st_size for p in tmp.iterdir())
    atomic_write_text(tmp / META, json.dumps(meta, indent=2))
    return meta


def _flush(keys: dict[str, list[int]], files: dict, columns: dict[str, _ColumnWriter]) -> None:
    """Append a chunk of integer keys and column offsets to their files."""
    for name, values in keys.items():
        np.asarray(values, dtype=np.int64).tofile(files[name])
        values.clear()
    for column in columns.values():
        column.flush()


def _write_indexes(folder: Path, source: Path, unit: str) -> int:
    """Sort the id hashes (rejecting duplicate ids) and group rows by page; returns the number of pages."""
    hashes = np.fromfile(folder / "id_hash.i64", dtype=np.int64)
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    del hashes
    (folder / "id_hash.i64").unlink()
    ids = StoredStrings(map_array(folder / "id.bin", np.uint8), map_array(folder / "id.off", np.int64))
    lines = map_array(folder / "line.i64", np.int64)
    for i in np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1]):
        a, b = sorted((int(order[i]), int(order[i + 1])))
        if ids[a] == ids[b]:
            raise DataFormatError(
                f"{source}:{lines[b]}: duplicate {unit} id {ids[b]!r} (first at line {lines[a]}); each {unit} id must be unique"
            )
    del lines
    (folder / "line.i64").unlink()
    sorted_hashes.tofile(folder / "id_hash.sorted.i64")
    order.astype(np.int64).tofile(folder / "id_hash.rows.i64")
    del sorted_hashes, order
    pages = np.fromfile(folder / "page.i64", dtype=np.int64)
    page_rows = np.argsort(pages, kind="stable")
    page_rows.astype(np.int64).tofile(folder / "page.rows.i64")
    unique, starts = np.unique(pages[page_rows], return_index=True)
    unique.tofile(folder / "page.unique.i64")
    np.append(starts, len(pages)).astype(np.int64).tofile(folder / "page.starts.i64")
    return len(unique)
