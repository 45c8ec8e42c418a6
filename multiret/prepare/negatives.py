"""The producer of BM25 hard negatives: per query, its top BM25 passages minus those of its gold pages (DPR's recipe).

Two drivers use it: ``multiret prepare kilt`` writes the pools of KILT's 36M passages to
``negatives/<task>.jsonl`` through the on-disk index of :mod:`multiret.prepare.bm25_index`
(:func:`mine_negatives`), and :func:`bm25_negatives`, the data module's injected miner
(``data.negatives_miner``), fills them in memory over a small (sub-sampled) corpus when
``data.negatives_dir`` has none.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from multiret.atomic import atomic_file
from multiret.data.corpus import Passages
from multiret.data.kilt import Query
from multiret.data.negatives import drop_gold_pages
from multiret.data.store import PassageStore
from multiret.index.bm25 import BM25Retriever
from multiret.prepare.bm25_index import BM25Searcher

log = logging.getLogger(__name__)

Search = Callable[[list[str], int], np.ndarray]  # query texts, depth → passage rows per query, best first


def bm25_pools(search: Search, corpus: Passages, queries: Sequence[Query], top_k: int) -> list[np.ndarray]:
    """Each query's negative pool: the rows of its top-``top_k`` hits (``top_k`` capped at the corpus) not of a gold page."""
    ranked = search([q.text for q in queries], min(top_k, len(corpus)))
    return [drop_gold_pages(corpus, query.gold_pages, rows) for query, rows in zip(queries, ranked)]


def bm25_negatives(corpus: Passages, queries_by_task: Mapping[str, list[Query]], top_k: int) -> None:
    """Set ``query.negatives`` from an in-memory BM25 index over the corpus (built once per call).

    The collator later draws the configured number of negatives from these pools; a query whose
    pool is empty falls back to random corpus passages there.
    """
    retriever = BM25Retriever(corpus)
    for queries in queries_by_task.values():
        if not queries:
            continue
        for query, pool in zip(queries, bm25_pools(retriever.search, corpus, queries, top_k)):
            query.negatives = pool.tolist()
        empty = sum(not q.negatives for q in queries)
        if empty:
            log.info("%d of %d queries have no BM25 negative; they get random negatives", empty, len(queries))


def mine_negatives(
    searcher: BM25Searcher, store: PassageStore, task: str, queries: list[Query], top_k: int, out: str | os.PathLike[str],
    batch: int = 5_000, show_progress: bool = True,
) -> dict[str, int]:
    """Write ``{"id", "negatives": [passage ids]}`` per query: its top-``top_k`` BM25 passages minus those of its gold pages.

    The file is the one ``data.negatives_dir`` reads (:func:`multiret.data.negatives.read_negatives`).
    """
    counts = {"queries": len(queries), "negatives": 0, "empty": 0}
    with atomic_file(out) as handle, tqdm(total=len(queries), desc=f"BM25 negatives {task}", disable=not show_progress) as bar:
        for start in range(0, len(queries), batch):
            part = queries[start:start + batch]
            for query, rows in zip(part, bm25_pools(searcher.search, store, part, top_k)):
                negatives = [store.ids[r] for r in rows.tolist()]
                counts["negatives"] += len(negatives)
                counts["empty"] += not negatives
                handle.write(json.dumps({"id": query.qid, "negatives": negatives}, ensure_ascii=False) + "\n")
            bar.update(len(part))
    return counts
