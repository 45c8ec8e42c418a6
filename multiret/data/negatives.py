"""Hard negatives for contrastive training: the rule that keeps gold pages out, and the negative files a producer
(``multiret prepare kilt``, :mod:`multiret.prepare.negatives`, :mod:`multiret.index.mining`) writes and training reads."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from multiret.data.corpus import Passages
from multiret.data.jsonl import DataFormatError, iter_jsonl, write_jsonl
from multiret.data.kilt import Query

log = logging.getLogger(__name__)


def drop_gold_pages(corpus: Passages, gold_pages: Iterable[str], rows: ArrayLike) -> np.ndarray:
    """The rows, in order, whose passage is not from one of the query's gold pages: the one rule every
    negative (BM25's, a trained model's, a random draw) obeys. Negative rows (FAISS's padding) go too."""
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[rows >= 0]
    gold = [code for code in map(corpus.page_code, gold_pages) if code is not None]
    return rows[~np.isin(corpus.page_codes[rows], gold)]


def negatives_file(folder: str | os.PathLike[str], task: str, split: str = "train") -> Path:
    """Where a task's mined negatives live, one ``{"id", "negatives": [passage ids]}`` per query:
    ``<folder>/<task>.jsonl`` for its training queries, ``<folder>/<task>.<split>.jsonl`` for another split's.
    Given positives (``{"id", "positives": [...]}``, written by ``multiret prepare dpr``) are named alike."""
    return Path(folder) / (f"{task}.jsonl" if split == "train" else f"{task}.{split}.jsonl")


def write_negatives(folder: str | os.PathLike[str], task: str, queries: list[Query], corpus: Passages) -> Path:
    """Write each query's negative pool (as passage ids, so a sub-sampled corpus can read it back), atomically."""
    path = negatives_file(folder, task)
    write_jsonl(path, ({"id": q.qid, "negatives": [corpus.ids[r] for r in q.negatives]} for q in queries))
    return path


def _read_lists(folder: str | os.PathLike[str], task: str, queries: list[Query], corpus: Passages, split: str,
                kind: str) -> list[list[int]]:
    """Each query's passage list ``kind`` (negatives or positives) from its task's file for ``split``, as corpus rows;
    passages absent from the corpus are dropped and counted.

    Every query must have an entry: a file made for other queries fails naming the first missing id.
    """
    path = negatives_file(folder, task, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {split} {kind} for task {task!r} (expected <data.{kind}_dir>/{path.name})")
    lists: dict[str, list[str]] = {}
    for line_number, record in iter_jsonl(path):
        if not isinstance(record.get(kind), list) or "id" not in record:
            raise DataFormatError(f"{path}:{line_number}: expected an object with 'id' and a list {kind!r}")
        lists[str(record["id"])] = [str(p) for p in record[kind]]
    missing_passages = 0
    rows_per_query = []
    for query in queries:
        if query.qid not in lists:
            raise DataFormatError(f"{path}: no {kind} for query {query.qid!r} of task {task!r}; write them for this query set")
        rows = []
        for passage in lists[query.qid]:
            row = corpus.find(passage)
            if row is None:
                missing_passages += 1
            else:
                rows.append(row)
        rows_per_query.append(rows)
    if missing_passages:
        log.warning("task %s: %d %s in %s are not in the (sub-sampled) corpus and were dropped", task, missing_passages, kind, path)
    return rows_per_query


def read_negatives(folder: str | os.PathLike[str], task: str, queries: list[Query], corpus: Passages,
                   split: str = "train") -> None:
    """Set each query's negative pool from its task's file for ``split`` (see :func:`_read_lists`)."""
    for query, rows in zip(queries, _read_lists(folder, task, queries, corpus, split, "negatives")):
        query.negatives = rows


def read_positives(folder: str | os.PathLike[str], task: str, queries: list[Query], corpus: Passages,
                   split: str = "train") -> list[Query]:
    """The queries with their given positives from their task's file for ``split`` (``multiret prepare dpr``
    writes them); a query none of whose positives is in the corpus is dropped, as :func:`attach_positives` does."""
    kept = []
    for query, rows in zip(queries, _read_lists(folder, task, queries, corpus, split, "positives")):
        query.positives = rows
        if rows:
            kept.append(query)
    if len(kept) < len(queries):
        log.warning("task %s: skipped %d of %d items whose given positives are not in the corpus", task,
                    len(queries) - len(kept), len(queries))
    return kept
