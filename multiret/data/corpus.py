"""Passage corpora in KILT's TSV layout (columns ``id, text, title, wikipedia_id``)."""

from __future__ import annotations

import csv
import hashlib
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from multiret.data.jsonl import DataFormatError

CORPUS_COLUMNS = ("id", "text", "title", "wikipedia_id")


@dataclass
class Corpus:
    """Passages held column-wise; ``page_ids[i]`` is the Wikipedia page of passage ``ids[i]``."""

    ids: list[str]
    texts: list[str]
    titles: list[str]
    page_ids: list[str]
    _row_of: dict[str, int] = field(init=False, repr=False)
    _rows_of_page: dict[str, list[int]] = field(init=False, repr=False)
    _page_code: dict[str, int] = field(init=False, repr=False)
    page_codes: np.ndarray = field(init=False, repr=False, compare=False)  # int64 per row, see page_code

    def __post_init__(self) -> None:
        self._row_of = {pid: row for row, pid in enumerate(self.ids)}
        if len(self._row_of) != len(self.ids):
            raise DataFormatError("corpus has duplicate passage ids; each passage id must be unique")
        self._rows_of_page = {}
        for row, page in enumerate(self.page_ids):
            self._rows_of_page.setdefault(page, []).append(row)
        self._page_code = {page: code for code, page in enumerate(self._rows_of_page)}
        self.page_codes = np.fromiter((self._page_code[p] for p in self.page_ids), dtype=np.int64, count=len(self.page_ids))

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, passage_id: str) -> int:
        """Row of a passage id (KeyError if absent)."""
        return self._row_of[passage_id]

    def find(self, passage_id: str) -> int | None:
        """Row of a passage id, or None if absent."""
        return self._row_of.get(passage_id)

    def rows_of_page(self, page_id: str) -> list[int]:
        """Rows of the page's passages in corpus order (empty if the page is not in the corpus)."""
        return self._rows_of_page.get(page_id, [])

    def has_page(self, page_id: str) -> bool:
        return page_id in self._rows_of_page

    @property
    def num_pages(self) -> int:
        return len(self._rows_of_page)

    def page_code(self, page_id: str) -> int | None:
        """The integer that :attr:`page_codes` holds for this page (None if absent): hits map to pages as array lookups."""
        return self._page_code.get(page_id)

    def passage_lengths(self, start: int, stop: int) -> np.ndarray:
        """Title plus text length of rows ``[start, stop)``: a cheap proxy of their token counts, to batch by length."""
        return np.fromiter((len(self.titles[r]) + len(self.texts[r]) for r in range(start, stop)), dtype=np.int64,
                           count=stop - start)

    def id_digest(self) -> str:
        """A digest of the passage ids in order, equal for a store holding the same ids (an index names its corpus by it)."""
        encoded = [pid.encode("utf-8") for pid in self.ids]
        return ids_digest([b"".join(encoded)], [np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))])

    def passage_text(self, row: int) -> str:
        """The text a passage encoder sees: the corpus's text column (vital's passages already begin with the title)."""
        return self.texts[row]

    def select_pages(self, pages: Iterable[str]) -> Corpus:
        """A sub-corpus holding every passage of the given pages, in the original order."""
        keep = set(pages)
        rows = [r for r, page in enumerate(self.page_ids) if page in keep]
        return Corpus(
            ids=[self.ids[r] for r in rows],
            texts=[self.texts[r] for r in rows],
            titles=[self.titles[r] for r in rows],
            page_ids=[self.page_ids[r] for r in rows],
        )


def ids_digest(blobs: Iterable[bytes | np.ndarray], lengths: Iterable[np.ndarray]) -> str:
    """blake2b of the ids' UTF-8 bytes, concatenated, and of their byte lengths (int64), each fed in chunks."""
    text, sizes = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    for blob in blobs:
        text.update(blob)
    for chunk in lengths:
        sizes.update(np.ascontiguousarray(chunk, dtype=np.int64).tobytes())
    return text.hexdigest() + sizes.hexdigest()


def read_corpus(path: str | os.PathLike[str]) -> Corpus:
    """Read a KILT-style passage TSV with a header row naming at least the four columns.

    Fails naming ``file:line`` on a row with the wrong number of fields. A folder written by
    ``multiret prepare kilt`` opens as a memory-mapped store with the same interface instead.
    """
    path = Path(path)
    if path.is_dir():
        from multiret.prepare.passages import PassageStore

        return PassageStore(path)  # type: ignore[return-value]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corpus file not found (expected a TSV with columns {', '.join(CORPUS_COLUMNS)})")
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    pages: list[str] = []
    csv.field_size_limit(1 << 24)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or not set(CORPUS_COLUMNS) <= set(header):
            raise DataFormatError(
                f"{path}:1: header {header!r} must name the columns {', '.join(CORPUS_COLUMNS)} (tab-separated)"
            )
        index = [header.index(name) for name in CORPUS_COLUMNS]
        for line_number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataFormatError(
                    f"{path}:{line_number}: expected {len(header)} tab-separated fields, got {len(row)}"
                )
            pid, text, title, page = (row[i] for i in index)
            ids.append(pid)
            texts.append(text)
            titles.append(title)
            pages.append(page.strip())
    return Corpus(ids=ids, texts=texts, titles=titles, page_ids=pages)


def subsample_pages(corpus: Corpus, required_pages: Iterable[str], max_pages: int | None, seed: int) -> Corpus:
    """Keep every required page plus random other pages up to ``max_pages`` pages in all.

    The demo uses this to search a few thousand pages instead of the full corpus while every
    gold page stays retrievable; the choice depends only on the inputs and the seed.
    """
    if max_pages is None:
        return corpus
    all_pages = sorted(set(corpus.page_ids))
    required = {p for p in required_pages if corpus.has_page(p)}
    others = [p for p in all_pages if p not in required]
    extra = max(0, max_pages - len(required))
    chosen = random.Random(seed).sample(others, min(extra, len(others)))
    return corpus.select_pages(required | set(chosen))
