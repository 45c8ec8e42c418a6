"""BM25 over a passage corpus with bm25s: the lexical baseline and the source of hard negatives."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import numpy as np

from multiret.data.corpus import Passages
from multiret.errors import UserError

logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True)
class BM25Settings:
    """BM25's term-frequency saturation ``k1`` and length normalisation ``b``: Anserini's defaults, used by KILT's
    BM25 baseline (Petroni et al., NAACL 2021). Their one home: the in-memory retriever, the prepared index
    (:func:`multiret.prepare.bm25_index.build_bm25_index`) and what both record take them from here."""

    k1: float = 0.9
    b: float = 0.4

    def __post_init__(self) -> None:
        if not (self.k1 >= 0 and 0 <= self.b <= 1):
            raise UserError(f"BM25 needs k1 ≥ 0 and 0 ≤ b ≤ 1, got k1={self.k1}, b={self.b} (--bm25-k1, --bm25-b)")


DEFAULT_BM25 = BM25Settings()


class BM25Retriever:
    """Lucene-style BM25 with ``settings`` (:class:`BM25Settings`)."""

    def __init__(self, corpus: Passages, settings: BM25Settings = DEFAULT_BM25, show_progress: bool = True) -> None:
        self.corpus = corpus
        self._show_progress = show_progress
        self._bm25 = bm25s.BM25(k1=settings.k1, b=settings.b, method="lucene")
        tokens = bm25s.tokenize(
            [corpus.passage_text(r) for r in range(len(corpus))], stopwords="en", show_progress=show_progress
        )
        self._bm25.index(tokens, show_progress=show_progress)

    def search(self, queries: Sequence[str], k: int) -> np.ndarray:
        """Corpus rows of the top-``k`` passages per query, best first: an int array ``(len(queries), k)``."""
        return self.search_scored(queries, k)[1]

    def search_scored(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with the BM25 scores: ``(scores, rows)``, each ``(len(queries), k)``."""
        k = min(k, len(self.corpus))
        tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        rows, scores = self._bm25.retrieve(tokens, k=k, show_progress=self._show_progress, n_threads=0)
        return np.asarray(scores), np.asarray(rows)
