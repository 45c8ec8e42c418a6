"""Passage corpora read from a passage TSV (layouts in :mod:`multiret.data.passage_files`) or a prepared store,
both behind the :class:`Passages` protocol."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from multiret.data.jsonl import DataFormatError
from multiret.data.passage_files import AUTO, iter_passages, read_layout
from multiret.data.store import PassageStore, ids_digest
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE, check_template, format_passage


class Passages(Protocol):
    """What readers of passages use, met by the in-memory :class:`Corpus` and the memory-mapped
    :class:`~multiret.data.store.PassageStore` alike (``page_codes`` and :meth:`page_code` map pages to integers)."""

    @property
    def ids(self) -> Sequence[str]: ...
    @property
    def texts(self) -> Sequence[str]: ...
    @property
    def titles(self) -> Sequence[str]: ...
    @property
    def page_ids(self) -> Sequence[str]: ...
    @property
    def page_codes(self) -> np.ndarray: ...
    @property
    def template(self) -> str | None: ...
    @property
    def page_key(self) -> str: ...
    @property
    def num_pages(self) -> int: ...
    def __len__(self) -> int: ...
    def row(self, passage_id: str) -> int: ...
    def find(self, passage_id: str) -> int | None: ...
    def rows_of_page(self, page_id: str) -> list[int]: ...
    def has_page(self, page_id: str) -> bool: ...
    def page_code(self, page_id: str) -> int | None: ...
    def passage_lengths(self, start: int, stop: int) -> np.ndarray: ...
    def id_digest(self) -> str: ...
    def passage_text(self, row: int) -> str: ...


@dataclass
class Corpus:
    """Passages held column-wise; ``page_ids[i]`` is the Wikipedia page of passage ``ids[i]``.

    ``template`` turns a passage into encoder and BM25 input (:func:`multiret.data.template.format_passage`);
    ``page_key`` is the provenance field its page ids match (``title`` for a file without page ids).
    """

    ids: list[str]
    texts: list[str]
    titles: list[str]
    page_ids: list[str]
    template: str | None = DEFAULT_PASSAGE_TEMPLATE
    page_key: str = "wikipedia_id"
    _row_of: dict[str, int] = field(init=False, repr=False)
    _rows_of_page: dict[str, list[int]] = field(init=False, repr=False)
    _page_code: dict[str, int] = field(init=False, repr=False)
    page_codes: np.ndarray = field(init=False, repr=False, compare=False)  # int64 per row, see page_code

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, str, str]], template: str | None = DEFAULT_PASSAGE_TEMPLATE,
                  page_key: str = "wikipedia_id") -> Corpus:
        """A corpus of ``(id, text, title, page_id)`` rows, in order: how code and tests build one passage at a time."""
        columns: tuple[list[str], list[str], list[str], list[str]] = ([], [], [], [])
        for row in rows:
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        ids, texts, titles, page_ids = columns
        return cls(ids=ids, texts=texts, titles=titles, page_ids=page_ids, template=template, page_key=page_key)

    def __post_init__(self) -> None:
        check_template(self.template)
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
        """The text a passage encoder and BM25 see: title and text filled into the corpus's template."""
        return format_passage(self.template, self.titles[row], self.texts[row])



def read_corpus(
    path: str | os.PathLike[str], layout: str = AUTO, template: str | None = DEFAULT_PASSAGE_TEMPLATE,
) -> Passages:
    """Read a passage TSV in one of the accepted layouts (``auto``: told from its first line).

    Fails naming ``file:line`` on a malformed row and both lines of a duplicate passage id. A
    folder written by ``multiret prepare kilt`` opens as a memory-mapped store with the same
    interface instead (its layout was read when it was built).
    """
    path = Path(path)
    if path.is_dir():
        return PassageStore(path, template)
    line_of: dict[str, int] = {}
    rows = []
    for row in iter_passages(path, layout):
        first = line_of.setdefault(row.id, row.line)
        if first != row.line:
            raise DataFormatError(f"{path}:{row.line}: duplicate passage id {row.id!r} (first at line {first}); "
                                  "each passage id must be unique")
        rows.append((row.id, row.text, row.title, row.page))
    if not rows:
        raise DataFormatError(f"{path}: no passages in the file")
    return Corpus.from_rows(rows, template, read_layout(path, layout).page_key)


def select_pages(source: Passages, pages: Iterable[str]) -> Corpus:
    """An in-memory corpus of every passage of the given pages, in ``source``'s order (meant for a few thousand pages)."""
    rows = sorted(r for page in set(pages) for r in source.rows_of_page(page))
    return Corpus.from_rows(((source.ids[r], source.texts[r], source.titles[r], source.page_ids[r]) for r in rows),
                            source.template, source.page_key)


def subsample_pages(corpus: Passages, required_pages: Iterable[str], max_pages: int | None, seed: int) -> Passages:
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
    return select_pages(corpus, required | set(chosen))
