"""Reading a memory-mapped passage store: KILT's 36M passages without holding them in Python objects.

``read_corpus`` keeps every column in Python lists, which cannot hold KILT's ~36M passages.
The store (written by :func:`multiret.data.store_writer.write_passage_store`) keeps each column
on disk and this module maps it: strings as one UTF-8 blob plus ``int64`` offsets, page ids as
``int64`` (KILT's ``wikipedia_id`` is numeric; a file without page ids, ``dpr``, stores a 64-bit
hash of the title and reads its titles as page ids; a corpus whose every passage is its own page,
BEIR's and MS MARCO's, the hash of the id), a page → rows index (rows sorted by page),
and passage id → row through sorted 64-bit hashes of the ids (a hash hit is confirmed against
the stored id, so collisions are harmless).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from multiret.data.jsonl import DataFormatError
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE, check_template, format_passage

META = "store.json"
FORMAT = "multiret-passages-v1"
CHUNK_ROWS = 100_000
ID_PAGES = "corpus-id"  # the page key of a corpus whose every passage is its own page: its page ids are its passage ids


def id_hash(passage_id: str | bytes) -> int:
    """Stable signed 64-bit hash of a passage id (Python's ``hash`` changes between processes)."""
    data = passage_id.encode("utf-8") if isinstance(passage_id, str) else passage_id
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def is_passage_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by :func:`build_passage_store`."""
    return (Path(path) / META).is_file()


def ids_digest(blobs: Iterable[bytes | np.ndarray], lengths: Iterable[np.ndarray]) -> str:
    """blake2b of the ids' UTF-8 bytes, concatenated, and of their byte lengths (int64), each fed in chunks."""
    text, sizes = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    for blob in blobs:
        text.update(blob)
    for chunk in lengths:
        sizes.update(np.ascontiguousarray(chunk, dtype=np.int64).tobytes())
    return text.hexdigest() + sizes.hexdigest()


class StoredStrings(Sequence[str]):
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
        for start in range(0, len(self._pages), CHUNK_ROWS):
            yield from (str(p) for p in self._pages[start:start + CHUNK_ROWS].tolist())


def map_array(path: Path, dtype: type) -> np.ndarray:
    """Memory-map a raw array file (numpy cannot map an empty file, e.g. a column of empty titles).

    A plain ndarray view of the map: indexing a ``np.memmap`` one element at a time costs
    several times an ndarray's (its ``__getitem__`` and ``__array_finalize__`` run in Python).
    """
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r").view(np.ndarray)


def _page_key(page: str) -> int | None:
    try:
        return int(page)
    except (TypeError, ValueError):
        return None


class PassageStore:
    """The :class:`~multiret.data.corpus.Passages` interface over a store folder, memory-mapped.

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
            return map_array(self.folder / name, dtype)

        self.ids = StoredStrings(array("id.bin", np.uint8), array("id.off", np.int64))
        self.texts = StoredStrings(array("text.bin", np.uint8), array("text.off", np.int64))
        self.titles = StoredStrings(array("title.bin", np.uint8), array("title.off", np.int64))
        self._pages = array("page.i64", np.int64)
        by_key = {"title": self.titles, ID_PAGES: self.ids}
        self.page_ids: Sequence[str] = by_key[self.page_key] if self.page_key in by_key else _Pages(self._pages)
        self.page_codes = self._pages  # numeric page ids, or hashes of the titles (of the ids) when pages are keyed by them
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
        """What ``page.i64`` holds for this page: its numeric id, or the hash of its title (its id) when pages are keyed by them."""
        if self.page_key == ID_PAGES:
            return id_hash(page_id)
        return id_hash(page_id.strip()) if self.page_key == "title" else _page_key(page_id)

    def _page_slot(self, page_id: str) -> int | None:
        key = self._page_number(page_id)
        if key is None:
            return None
        i = int(np.searchsorted(self._unique_pages, key))
        return i if i < len(self._unique_pages) and self._unique_pages[i] == key else None

    def rows_of_page(self, page_id: str) -> list[int]:
        """Rows of the page's passages in corpus order (empty if the page is not in the corpus)."""
        if self.page_key == ID_PAGES:  # exact, where two ids sharing a hash would share a page slot
            row = self.find(page_id)
            return [] if row is None else [row]
        slot = self._page_slot(page_id)
        if slot is None:
            return []
        return self._page_rows[self._page_starts[slot]:self._page_starts[slot + 1]].tolist()

    def has_page(self, page_id: str) -> bool:
        return self.find(page_id) is not None if self.page_key == ID_PAGES else self._page_slot(page_id) is not None

    def page_code(self, page_id: str) -> int | None:
        """The page's entry in :attr:`page_codes`, None if absent: as :meth:`Corpus.page_code`."""
        return self._page_number(page_id) if self.has_page(page_id) else None

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
