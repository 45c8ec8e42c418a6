"""Building a passage store (read by :class:`multiret.data.store.PassageStore`) from a passage TSV.

Peak memory of the build is a chunk of rows plus the sorts of the two ``int64`` key arrays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from multiret.atomic import atomic_folder, atomic_write_text
from multiret.data.jsonl import DataFormatError
from multiret.data.passage_files import AUTO, Layout, iter_passages, read_layout
from multiret.data.store import CHUNK_ROWS, FORMAT, META, StoredStrings, id_hash, map_array


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


def build_passage_store(
    tsv: str | os.PathLike[str], out: str | os.PathLike[str], show_progress: bool = True, layout: str = AUTO,
) -> dict:
    """Stream a passage TSV (a layout of :mod:`multiret.data.passage_files`) into a store folder.

    Writes into ``<out>.tmp`` and renames it to ``out`` when complete, so an interrupted build
    leaves no half store. Fails naming ``file:line`` on a malformed row, a non-numeric page id
    or a duplicate passage id (with both lines). A file without page ids (``dpr``) keys its
    pages by title. Returns the store's metadata (layout, passages, pages, bytes).
    """
    tsv, out = Path(tsv), Path(out)
    found = read_layout(tsv, layout)
    with atomic_folder(out) as tmp:
        return _write_store(tsv, tmp, found, layout, show_progress)


def _write_store(tsv: Path, tmp: Path, found: Layout, layout: str, show_progress: bool) -> dict:
    """The store's files written into ``tmp``; returns its metadata."""
    columns = {name: _ColumnWriter(tmp, name) for name in ("id", "text", "title")}
    keys: dict[str, list[int]] = {"page": [], "id_hash": [], "line": []}
    files = {name: (tmp / f"{name}.i64").open("wb") for name in keys}
    rows = 0
    with tqdm(iter_passages(tsv, layout), unit="passage", desc="passage store", disable=not show_progress) as passages:
        for row in passages:
            if found.page_key == "title":
                keys["page"].append(id_hash(row.page))
            else:
                try:
                    keys["page"].append(int(row.page))
                except ValueError:
                    raise DataFormatError(
                        f"{tsv}:{row.line}: wikipedia_id {row.page!r} is not an integer (KILT page ids are numeric)"
                    ) from None
            for name, value in (("id", row.id), ("text", row.text), ("title", row.title)):
                columns[name].add(value.encode("utf-8"))
            keys["id_hash"].append(id_hash(row.id))
            keys["line"].append(row.line)
            rows += 1
            if rows % CHUNK_ROWS == 0:
                _flush(keys, files, columns)
    _flush(keys, files, columns)
    for handle in files.values():
        handle.close()
    for column in columns.values():
        column.close()
    if rows == 0:
        raise DataFormatError(f"{tsv}: no passages in the file")
    num_pages = _write_indexes(tmp, tsv)
    meta = {"format": FORMAT, "source": str(tsv), "layout": found.name, "page_key": found.page_key,
            "passages": rows, "pages": num_pages}
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


def _write_indexes(folder: Path, tsv: Path) -> int:
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
                f"{tsv}:{lines[b]}: duplicate passage id {ids[b]!r} (first at line {lines[a]}); each passage id must be unique"
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
