"""Hard negatives for contrastive training: top BM25 passages that are not from a gold page."""

from __future__ import annotations

import logging

from multiret.data.corpus import Corpus
from multiret.data.kilt import Query
from multiret.index.bm25 import BM25Retriever

log = logging.getLogger(__name__)


def attach_bm25_negatives(retriever: BM25Retriever, queries: list[Query], corpus: Corpus, top_k: int) -> None:
    """Store, per query, its top-``top_k`` BM25 passages minus those of its gold pages (DPR's recipe).

    The collator later draws the configured number of negatives from this pool; a query whose
    pool is empty falls back to random corpus passages there.
    """
    if not queries:
        return
    ranked = retriever.search([q.text for q in queries], k=top_k)
    empty = 0
    for query, rows in zip(queries, ranked):
        gold = set(query.gold_pages)
        query.negatives = [int(r) for r in rows if corpus.page_ids[int(r)] not in gold]
        empty += not query.negatives
    if empty:
        log.info("%d of %d queries have no BM25 negative; they get random negatives", empty, len(queries))
