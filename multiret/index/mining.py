"""Hard negatives mined with a trained model: its best-ranked passages that are not from a gold page (ANCE, Xiong et al. 2021)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from multiret.data.collator import PromptCollator
from multiret.data.corpus import Corpus
from multiret.data.kilt import Query
from multiret.data.negatives import drop_gold_pages, write_negatives
from multiret.data.tasks import TaskSpec
from multiret.errors import UserError
from multiret.index.dense import search_tasks
from multiret.index.faiss_index import DenseIndex
from multiret.model.biencoder import BiEncoder

log = logging.getLogger(__name__)


def mine_negatives(
    model: BiEncoder,
    index: DenseIndex,
    corpus: Corpus,
    collator: PromptCollator,
    tasks: Sequence[TaskSpec],
    queries: Mapping[str, list[Query]],
    out_dir: str | os.PathLike[str],
    depth: int,
    keep: int,
    batch_size: int = 64,
) -> list[Path]:
    """Search ``depth`` passages per query (prompted as at evaluation), keep the first ``keep`` not from its gold pages.

    Each task's pools go to ``<out_dir>/<task>.jsonl`` (the format ``data.negatives_dir`` reads),
    written atomically, one task at a time.
    """
    if not 0 < keep <= depth:
        raise UserError(f"keep={keep} negatives per query must be > 0 and <= the search depth {depth}")
    found = search_tasks(model, index, collator, tasks, queries, depth, batch_size)
    rankings = {task: rows for task, (_, rows) in found.items()}
    paths = []
    for task in tasks:
        short = 0
        for query, rows in zip(queries[task.name], rankings[task.name]):
            query.negatives = drop_gold_pages(corpus, query.gold_pages, rows)[:keep].tolist()
            short += len(query.negatives) < keep
        if short:
            log.info("task %s: %d of %d queries have fewer than %d mined negatives (gold passages filled the top %d)",
                     task.name, short, len(queries[task.name]), keep, depth)
        paths.append(write_negatives(out_dir, task.name, queries[task.name], corpus))
    return paths
