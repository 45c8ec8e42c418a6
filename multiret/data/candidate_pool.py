"""The passages dev queries are ranked against while a run trains: one pool per task, fixed for the run.

Re-encoding a KILT-scale corpus at every validation is out of reach, so each task gets a pool:
every dev query's gold passages and hard negatives plus a seeded random sample of the task's
corpus, or the whole corpus when it holds at most ``whole_corpus_max`` passages. The pool is a
pure function of the corpus, the queries and the seed, so a resumed run scores the same pool.
A per-task corpus plugs in by handing each task its own ``corpus`` to :func:`candidate_pool`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from multiret.data.corpus import Passages
from multiret.data.kilt import Query


@dataclass(frozen=True)
class CandidatePool:
    """Sorted corpus rows a task's dev queries are ranked against."""

    rows: np.ndarray
    whole_corpus: bool

    def record(self, corpus: Passages) -> dict[str, Any]:
        """What the manifest keeps: the size, whether it is the whole corpus, and a digest of its passage ids."""
        digest = hashlib.sha256("\n".join(corpus.ids[int(r)] for r in self.rows).encode()).hexdigest()
        return {"passages": len(self.rows), "whole_corpus": self.whole_corpus, "ids_sha256": digest}


def candidate_pool(corpus: Passages, queries: Iterable[Query], sample: int, whole_corpus_max: int, seed: int,
                   hard_negatives: int | None = None) -> CandidatePool:
    """Gold passages (``positives``) and the first ``hard_negatives`` hard negatives (all with None) of ``queries``
    plus ``sample`` random other passages.

    The whole corpus when ``len(corpus) <= whole_corpus_max``; the sample is drawn with
    ``seed`` from the passages not already in the pool.
    """
    if len(corpus) <= whole_corpus_max:
        return CandidatePool(np.arange(len(corpus), dtype=np.int64), True)
    required = np.unique(np.fromiter((r for q in queries for r in (*q.positives, *q.negatives[:hard_negatives])), dtype=np.int64))
    # drawn from the whole range, then the required rows dropped: no array of the corpus's size (36M rows in KILT)
    drawn = np.random.default_rng(seed).choice(len(corpus), size=min(sample + len(required), len(corpus)), replace=False)
    chosen = drawn[~np.isin(drawn, required)][:sample]
    return CandidatePool(np.union1d(required, chosen), False)
