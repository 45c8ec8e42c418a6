"""Encode a corpus with a bi-encoder into a FAISS index, and search it with prompted queries."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from multiret.data.collator import PromptCollator
from multiret.data.corpus import Corpus
from multiret.data.kilt import Query
from multiret.data.tasks import TaskSpec
from multiret.index.encode import encode_texts
from multiret.index.faiss_index import EMBEDDINGS, DenseIndex
from multiret.model.biencoder import BiEncoder

ENCODE_CHUNK = 1 << 18  # passages whose texts are held at once while encoding the corpus


def index_corpus(
    model: BiEncoder,
    corpus: Corpus,
    collator: PromptCollator,
    out_dir: str | Path,
    factory: str = "Flat",
    batch_size: int = 64,
    train_sample: int | None = None,
    show_progress: bool = True,
) -> DenseIndex:
    """Embed every passage with the passage encoder and save embeddings, ids and the FAISS index.

    The corpus is encoded ``ENCODE_CHUNK`` passages at a time into a memory-mapped
    ``embeddings.npy`` (renamed into place when complete), so memory does not grow with the
    corpus beyond one chunk's texts and what the FAISS index itself holds.
    """
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / EMBEDDINGS
    partial = out_dir / f".{EMBEDDINGS}.partial"
    embeddings: np.memmap | None = None
    try:
        for start in range(0, len(corpus), ENCODE_CHUNK):
            stop = min(len(corpus), start + ENCODE_CHUNK)
            part = f" {start:,}–{stop:,} of {len(corpus):,}" if len(corpus) > ENCODE_CHUNK else ""
            block = encode_texts([corpus.passage_text(r) for r in range(start, stop)], collator.passages,
                                 model.encode_passages, batch_size, model.device, f"encoding corpus{part}", show_progress)
            if embeddings is None:
                embeddings = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(len(corpus), block.shape[1]))
            embeddings[start:stop] = block
        if embeddings is None:
            raise ValueError("nothing to encode: the corpus is empty")
        embeddings.flush()
        del embeddings
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    embeddings = np.load(final, mmap_mode="r")
    index = DenseIndex.build(embeddings, list(corpus.ids), factory, train_sample)
    index.save(out_dir, embeddings, factory)
    return index


def search_tasks(
    model: BiEncoder,
    index: DenseIndex,
    corpus: Corpus,
    collator: PromptCollator,
    tasks: Sequence[TaskSpec],
    queries: Mapping[str, Sequence[Query]],
    top_k: int = 100,
    batch_size: int = 64,
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """Top-``top_k`` corpus rows per query of every task (queries carry their task's prompt, text or soft)."""
    model.eval()
    row_of_index = np.array([corpus.row(pid) for pid in index.ids] + [-1])
    rankings: dict[str, np.ndarray] = {}
    for task in tasks:
        texts = [q.text for q in queries[task.name]]
        vectors = encode_texts(
            texts,
            lambda batch, task=task: collator.queries(batch, task),
            lambda ids, mask, task=task: model.encode_queries(ids, mask, task=task.name),
            batch_size,
            model.device,
            f"encoding {task.name} queries",
            show_progress,
        )
        _, hits = index.search(vectors, top_k)
        rankings[task.name] = row_of_index[hits]
    return rankings


def model_device() -> torch.device:
    """The device indexing runs on: the first GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
