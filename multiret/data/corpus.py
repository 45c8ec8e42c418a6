"""Passage corpora read from a passage TSV (layouts in :mod:`multiret.data.passage_files`) or a prepared store."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from multiret.data.jsonl import DataFormatError
from multiret.data.passage_files import AUTO, iter_passages, read_layout
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE, check_template, format_passage


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

    def select_pages(self, pages: Iterable[str]) -> Corpus:
        """A sub-corpus holding every passage of the given pages, in the original order."""
        keep = set(pages)
        rows = [r for r, page in enumerate(self.page_ids) if page in keep]
        return Corpus(
            ids=[self.ids[r] for r in rows],
            texts=[self.texts[r] for r in rows],
            titles=[self.titles[r] for r in rows],
            page_ids=[self.page_ids[r] for r in rows],
            template=self.template,
            page_key=self.page_key,
        )


def ids_digest(blobs: Iterable[bytes | np.ndarray], lengths: Iterable[np.ndarray]) -> str:
    """blake2b of the ids' UTF-8 bytes, concatenated, and of their byte lengths (int64), each fed in chunks."""
    text, sizes = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    for blob in blobs:
        text.update(blob)
    for chunk in lengths:
        sizes.update(np.ascontiguousarray(chunk, dtype=np.int64).tobytes())
    return text.hexdigest() + sizes.hexdigest()


def read_corpus(
    path: str | os.PathLike[str], layout: str = AUTO, template: str | None = DEFAULT_PASSAGE_TEMPLATE,
) -> Corpus:
    """Read a passage TSV in one of the accepted layouts (``auto``: told from its first line).

    Fails naming ``file:line`` on a malformed row and both lines of a duplicate passage id. A
    folder written by ``multiret prepare kilt`` opens as a memory-mapped store with the same
    interface instead (its layout was read when it was built).
    """
    path = Path(path)
    if path.is_dir():
        from multiret.prepare.passages import PassageStore

        return PassageStore(path, template)  # type: ignore[return-value]
    line_of: dict[str, int] = {}
    texts: list[str] = []
    titles: list[str] = []
    pages: list[str] = []
    for row in iter_passages(path, layout):
        first = line_of.setdefault(row.id, row.line)
        if first != row.line:
            raise DataFormatError(f"{path}:{row.line}: duplicate passage id {row.id!r} (first at line {first}); "
                                  "each passage id must be unique")
        texts.append(row.text)
        titles.append(row.title)
        pages.append(row.page)
    if not line_of:
        raise DataFormatError(f"{path}: no passages in the file")
    return Corpus(ids=list(line_of), texts=texts, titles=titles, page_ids=pages, template=template,
                  page_key=read_layout(path, layout).page_key)


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
