"""Encode a corpus with a bi-encoder into a FAISS index, and search it with prompted queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch

from multiret.data.collator import PromptCollator
from multiret.data.corpus import Corpus
from multiret.data.kilt import Query
from multiret.data.tasks import TaskSpec
from multiret.index.encode import encode_texts
from multiret.index.encoding_settings import EncodingSettings
from multiret.index.faiss_index import DenseIndex
from multiret.index.sharded import build_from_shards, encode_shards
from multiret.model.biencoder import BiEncoder


def index_corpus(
    trainer: L.Trainer,
    model: BiEncoder,
    corpus: Corpus,
    collator: PromptCollator,
    out_dir: str | Path,
    settings: EncodingSettings,
    factory: str = "Flat",
    train_sample: int | None = None,
) -> DenseIndex | None:
    """Embed every passage into ``<out_dir>/shards/`` and build the FAISS index over them; None on processes after the first.

    ``trainer`` (carrying a :class:`ShardWriter`) decides the processes: each encodes its shard
    chunk by chunk, keeping finished chunks across interruptions; memory holds one chunk's texts
    and what the FAISS index itself holds. ``settings`` (``conf/index``'s encoding settings:
    precision, batch size, tokenising workers, token cache) is how the passages are encoded.
    """
    model.eval()
    encode_shards(trainer, model, corpus, collator, out_dir, settings)
    if trainer.global_rank > 0:
        return None
    return build_from_shards(out_dir, corpus, trainer.world_size, factory, train_sample)


def search_tasks(
    model: BiEncoder,
    index: DenseIndex,
    collator: PromptCollator,
    tasks: Sequence[TaskSpec],
    queries: Mapping[str, Sequence[Query]],
    top_k: int = 100,
    batch_size: int = 64,
    show_progress: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Top-``top_k`` ``(scores, corpus rows)`` per query of every task, as FAISS returns them (queries carry their
    task's prompt, text or soft); rows -1 pad."""
    model.eval()
    rankings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for task in tasks:
        vectors = encode_task_queries(model, collator, task, [q.text for q in queries[task.name]], batch_size, show_progress)
        rankings[task.name] = index.search(vectors, top_k)  # FAISS ids are corpus rows
    return rankings


def encode_task_queries(
    model: BiEncoder,
    collator: PromptCollator,
    task: TaskSpec,
    texts: Sequence[str],
    batch_size: int = 64,
    show_progress: bool = True,
) -> np.ndarray:
    """``(len(texts), dim)`` float32 vectors of one task's queries, with its prompt (text or soft) and length limit.

    The one place queries are encoded for search: the evaluation, mining's searches and ``multiret.Retriever``.
    """
    return encode_texts(
        list(texts),
        lambda batch: collator.queries(batch, task),
        lambda ids, mask: model.encode_queries(ids, mask, task=task.name),
        batch_size,
        model.device,
        f"encoding {task.name} queries",
        show_progress,
    )


def model_device() -> torch.device:
    """The device indexing runs on: the first GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
