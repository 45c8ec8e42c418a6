"""BM25 over a passage corpus with bm25s: the lexical baseline and the source of hard negatives."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np

from multiret.data.corpus import Passages

logging.getLogger("bm25s").setLevel(logging.WARNING)


class BM25Retriever:
    """Lucene-style BM25 (k1=0.9, b=0.4, Anserini's defaults used by KILT's BM25 baseline)."""

    def __init__(self, corpus: Passages, k1: float = 0.9, b: float = 0.4, show_progress: bool = True) -> None:
        self.corpus = corpus
        self._show_progress = show_progress
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
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
