"""A memory-mapped passage store: KILT's 36M passages without holding them in Python objects.

``read_corpus`` keeps every column in Python lists, which cannot hold KILT's ~36M passages.
The store keeps each column on disk and maps it: strings as one UTF-8 blob plus ``int64``
offsets, page ids as ``int64`` (KILT's ``wikipedia_id`` is numeric; a file without page ids,
``dpr``, stores a 64-bit hash of the title and reads its titles as page ids), a page → rows index
(rows sorted by page), and passage id → row through sorted 64-bit hashes of the ids (a hash
hit is confirmed against the stored id, so collisions are harmless). Peak memory of the build
is a chunk of rows plus the sorts of the two ``int64`` key arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from tqdm.auto import tqdm

from multiret.atomic import atomic_folder, atomic_write_text
from multiret.data.corpus import Corpus, ids_digest
from multiret.data.jsonl import DataFormatError
from multiret.data.passage_files import AUTO, Layout, iter_passages, read_layout
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE, check_template, format_passage

META = "store.json"
FORMAT = "multiret-passages-v1"
_CHUNK_ROWS = 100_000


def id_hash(passage_id: str | bytes) -> int:
    """Stable signed 64-bit hash of a passage id (Python's ``hash`` changes between processes)."""
    data = passage_id.encode("utf-8") if isinstance(passage_id, str) else passage_id
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def is_passage_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by :func:`build_passage_store`."""
    return (Path(path) / META).is_file()


class _Strings(Sequence[str]):
    """A read-only column of strings: ``blob[offsets[i]:offsets[i + 1]]`` decoded as UTF-8."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self._blob, self._offsets = blob, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._blob[start:end].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


class _Pages(Sequence[str]):
    """The page-id column as strings (the form gold provenance uses), backed by an ``int64`` array."""

    def __init__(self, pages: np.ndarray) -> None:
        self._pages = pages

    def __len__(self) -> int:
        return len(self._pages)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [str(p) for p in self._pages[index].tolist()]
        return str(int(self._pages[int(index)]))

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._pages), _CHUNK_ROWS):
            yield from (str(p) for p in self._pages[start:start + _CHUNK_ROWS].tolist())


def _map(path: Path, dtype: type) -> np.ndarray:
    """Memory-map a raw array file (numpy cannot map an empty file, e.g. a column of empty titles)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _page_key(page: str) -> int | None:
    try:
        return int(page)
    except (TypeError, ValueError):
        return None


class PassageStore:
    """The :class:`~multiret.data.corpus.Corpus` interface over a store folder, memory-mapped.

    ``template`` turns a passage into encoder and BM25 input, as :attr:`Corpus.template`.
    """

    def __init__(self, folder: str | os.PathLike[str], template: str | None = DEFAULT_PASSAGE_TEMPLATE) -> None:
        self.folder = Path(folder)
        self.template = check_template(template)
        if not is_passage_store(self.folder):
            raise FileNotFoundError(f"{self.folder}: not a passage store (no {META}); build it with `multiret prepare kilt`")
        meta = json.loads((self.folder / META).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise DataFormatError(f"{self.folder / META}: format {meta.get('format')!r}, expected {FORMAT!r}; rebuild the store")
        self.meta = meta
        self.page_key: str = meta.get("page_key", "wikipedia_id")

        def array(name: str, dtype: type) -> np.ndarray:
            return _map(self.folder / name, dtype)

        self.ids = _Strings(array("id.bin", np.uint8), array("id.off", np.int64))
        self.texts = _Strings(array("text.bin", np.uint8), array("text.off", np.int64))
        self.titles = _Strings(array("title.bin", np.uint8), array("title.off", np.int64))
        self._pages = array("page.i64", np.int64)
        self.page_ids: Sequence[str] = self.titles if self.page_key == "title" else _Pages(self._pages)
        self.page_codes = self._pages  # numeric page ids, or hashes of the titles when pages are keyed by title
        self._hashes = array("id_hash.sorted.i64", np.int64)
        self._hash_rows = array("id_hash.rows.i64", np.int64)
        self._page_rows = array("page.rows.i64", np.int64)
        self._unique_pages = array("page.unique.i64", np.int64)
        self._page_starts = array("page.starts.i64", np.int64)

    def __len__(self) -> int:
        return len(self._pages)

    @property
    def num_pages(self) -> int:
        return len(self._unique_pages)

    def find(self, passage_id: str) -> int | None:
        """Row of a passage id, or None if absent."""
        key = id_hash(passage_id)
        i = int(np.searchsorted(self._hashes, key, side="left"))
        while i < len(self._hashes) and self._hashes[i] == key:
            row = int(self._hash_rows[i])
            if self.ids[row] == passage_id:
                return row
            i += 1
        return None

    def row(self, passage_id: str) -> int:
        """Row of a passage id (KeyError if absent)."""
        row = self.find(passage_id)
        if row is None:
            raise KeyError(passage_id)
        return row

    def _page_number(self, page_id: str) -> int | None:
        """What ``page.i64`` holds for this page: its numeric id, or the hash of its title when pages are keyed by title."""
        return id_hash(page_id.strip()) if self.page_key == "title" else _page_key(page_id)

    def _page_slot(self, page_id: str) -> int | None:
        key = self._page_number(page_id)
        if key is None:
            return None
        i = int(np.searchsorted(self._unique_pages, key))
        return i if i < len(self._unique_pages) and self._unique_pages[i] == key else None

    def rows_of_page(self, page_id: str) -> list[int]:
        """Rows of the page's passages in corpus order (empty if the page is not in the corpus)."""
        slot = self._page_slot(page_id)
        if slot is None:
            return []
        return self._page_rows[self._page_starts[slot]:self._page_starts[slot + 1]].tolist()

    def has_page(self, page_id: str) -> bool:
        return self._page_slot(page_id) is not None

    def page_code(self, page_id: str) -> int | None:
        """The page's entry in :attr:`page_codes`, None if absent: as :meth:`Corpus.page_code`."""
        return None if self._page_slot(page_id) is None else self._page_number(page_id)

    def passage_lengths(self, start: int, stop: int) -> np.ndarray:
        """Title plus text bytes of rows ``[start, stop)``, from the offsets alone (as :meth:`Corpus.passage_lengths`)."""
        return np.diff(self.titles._offsets[start:stop + 1]) + np.diff(self.texts._offsets[start:stop + 1])

    def id_digest(self) -> str:
        """The digest :meth:`Corpus.id_digest` gives for the same ids, read from the id column in chunks."""
        blob, offsets, step = self.ids._blob, self.ids._offsets, 1 << 26
        return ids_digest((blob[i:i + step] for i in range(0, len(blob), step)),
                          (np.diff(offsets[i:i + step + 1]) for i in range(0, len(offsets) - 1, step)))

    def passage_text(self, row: int) -> str:
        """The text a passage encoder and BM25 see, as :meth:`Corpus.passage_text`."""
        return format_passage(self.template, self.titles[row], self.texts[row])

    def select_pages(self, pages: Iterable[str]) -> Corpus:
        """An in-memory :class:`Corpus` of every passage of the given pages (meant for sub-corpora of a few thousand pages)."""
        rows = sorted(r for page in set(pages) for r in self.rows_of_page(page))
        return Corpus(
            ids=[self.ids[r] for r in rows],
            texts=[self.texts[r] for r in rows],
            titles=[self.titles[r] for r in rows],
            page_ids=[self.page_ids[r] for r in rows],
            template=self.template,
            page_key=self.page_key,
        )


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
            if rows % _CHUNK_ROWS == 0:
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
    ids = _Strings(_map(folder / "id.bin", np.uint8), _map(folder / "id.off", np.int64))
    lines = _map(folder / "line.i64", np.int64)
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
