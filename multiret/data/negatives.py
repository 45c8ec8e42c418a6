"""Hard negatives for contrastive training: top BM25 passages that are not from a gold page, or mined lists read from files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from multiret.data.corpus import Corpus
from multiret.data.jsonl import DataFormatError, iter_jsonl, write_jsonl
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


def negatives_file(folder: str | os.PathLike[str], task: str, split: str = "train") -> Path:
    """Where a task's mined negatives live, one ``{"id", "negatives": [passage ids]}`` per query:
    ``<folder>/<task>.jsonl`` for its training queries, ``<folder>/<task>.<split>.jsonl`` for another split's."""
    return Path(folder) / (f"{task}.jsonl" if split == "train" else f"{task}.{split}.jsonl")


def write_negatives(folder: str | os.PathLike[str], task: str, queries: list[Query], corpus: Corpus) -> Path:
    """Write each query's negative pool (as passage ids, so a sub-sampled corpus can read it back), atomically."""
    path = negatives_file(folder, task)
    write_jsonl(path, ({"id": q.qid, "negatives": [corpus.ids[r] for r in q.negatives]} for q in queries))
    return path


def read_negatives(folder: str | os.PathLike[str], task: str, queries: list[Query], corpus: Corpus,
                   split: str = "train") -> None:
    """Set each query's negative pool from its task's file for ``split``; passages absent from the corpus are
    dropped and counted.

    Every query must have an entry: a file mined for other queries fails naming the first missing id.
    """
    path = negatives_file(folder, task, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {split} negatives for task {task!r} (expected <data.negatives_dir>/{path.name})")
    pools: dict[str, list[str]] = {}
    for line_number, record in iter_jsonl(path):
        if not isinstance(record.get("negatives"), list) or "id" not in record:
            raise DataFormatError(f"{path}:{line_number}: expected an object with 'id' and a list 'negatives'")
        pools[str(record["id"])] = [str(p) for p in record["negatives"]]
    missing_passages = 0
    for query in queries:
        if query.qid not in pools:
            raise DataFormatError(f"{path}: no negatives for query {query.qid!r} of task {task!r}; mine them for this query set")
        rows = []
        for passage in pools[query.qid]:
            row = corpus.find(passage)
            if row is None:
                missing_passages += 1
            else:
                rows.append(row)
        query.negatives = rows
    if missing_passages:
        log.warning("task %s: %d negatives in %s are not in the (sub-sampled) corpus and were dropped", task, missing_passages, path)
