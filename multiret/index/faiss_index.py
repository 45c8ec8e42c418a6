"""Dense passage index: a FAISS index whose ids are corpus rows, with a description naming its corpus."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from multiret.atomic import atomic_path, atomic_write_text
from multiret.data.corpus import Corpus
from multiret.index.faiss_build import import_faiss

faiss = import_faiss()

INDEX = "index.faiss"
META = "index.json"
STALE = ("embeddings.npy", "ids.txt")  # what older versions wrote next to the index; removed so the folder never mixes two
ADD_CHUNK = 1 << 18  # rows converted and added at a time, so memory-mapped shards are never copied whole
DEVICES = ("cpu", "gpu")
GPU_PLACEMENTS = ("replicated", "sharded")


class DenseIndex:
    """A FAISS inner-product index over passage embeddings (``Flat`` = exact search by default).

    Vectors are added in corpus order, so FAISS's own int64 ids are the corpus rows: a hit maps
    back to its passage without any table. ``corpus_ids`` is the corpus's
    :meth:`~multiret.data.corpus.Corpus.id_digest`, checked when the index is loaded for a corpus.
    Any FAISS factory string works (e.g. ``IVF65536,PQ64`` for KILT's 36M passages); indexes
    that need training are trained on the embeddings, or on a seeded random sample of
    ``train_sample`` of them. ``search_parameters`` is a FAISS ParameterSpace string applied
    before searching (``nprobe=128`` for IVF indexes).
    """

    def __init__(self, index: faiss.Index, corpus_ids: str) -> None:
        self.index = index
        self.corpus_ids = corpus_ids
        self.on_gpu = False

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray | Sequence[np.ndarray],
        corpus_ids: str,
        factory: str = "Flat",
        train_sample: int | None = None,
    ) -> DenseIndex:
        """Index ``embeddings``: one array, or row blocks in order (e.g. memory-mapped shards), added chunk by chunk."""
        blocks = [embeddings] if isinstance(embeddings, np.ndarray) else list(embeddings)
        offsets = np.cumsum([0] + [len(b) for b in blocks])
        index = faiss.index_factory(blocks[0].shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            if train_sample is None or train_sample >= offsets[-1]:
                sample = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
            else:
                rows = np.sort(np.random.default_rng(0).choice(offsets[-1], train_sample, replace=False))
                sample = _gather(blocks, offsets, rows)
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        for block in blocks:
            for start in range(0, len(block), ADD_CHUNK):
                index.add(np.ascontiguousarray(block[start : start + ADD_CHUNK], dtype=np.float32))
        return cls(index, corpus_ids)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def set_search_parameters(self, parameters: str | None) -> None:
        """Apply a FAISS ParameterSpace string such as ``nprobe=128`` (``None``: the index's defaults)."""
        if parameters:
            space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
            space.set_index_parameters(self.index, parameters)

    def to_gpus(self, placement: str = "replicated") -> None:
        """Move the index onto every visible GPU for searching: each holds all of it, or 1/n of it (``sharded``).

        Not run by the test suite (no GPU FAISS there): a thin call of FAISS's own cloner.
        """
        require_gpu_faiss()
        if placement not in GPU_PLACEMENTS:
            raise ValueError(f"index.gpu_placement={placement!r}; choose one of {list(GPU_PLACEMENTS)}")
        options = faiss.GpuMultipleClonerOptions()
        options.shard = placement == "sharded"
        self.index = faiss.index_cpu_to_all_gpus(self.index, co=options)
        self.on_gpu = True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` per query; rows are corpus rows (-1 where fewer than k exist)."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))

    def save(self, directory: str | os.PathLike[str], factory: str) -> None:
        """Write the FAISS index and its description (size, dimension, corpus digest), each atomically.

        The embeddings stay where the encoder wrote them (``shards/``).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in STALE:
            (directory / name).unlink(missing_ok=True)
        with atomic_path(directory / INDEX) as tmp:
            faiss.write_index(self.index, str(tmp))
        meta = {"factory": factory, "size": self.size, "dim": int(self.index.d), "corpus_ids": self.corpus_ids}
        atomic_write_text(directory / META, json.dumps(meta))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], corpus: Corpus, mmap: bool = False) -> DenseIndex:
        """The index in ``directory``, refused unless it was built over exactly ``corpus``'s passages in its order.

        ``mmap`` maps the file instead of reading it, so that a search answers before a large index is read whole.
        """
        directory = Path(directory)
        missing = [name for name in (INDEX, META) if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a multiret index (missing {', '.join(missing)}); run `multiret index` first")
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        if "corpus_ids" not in meta:
            raise ValueError(f"{directory / META}: written by an older multiret (rows named in ids.txt); run `multiret index` again")
        if meta["size"] != len(corpus) or meta["corpus_ids"] != corpus.id_digest():
            raise ValueError(f"{directory}: the index holds {meta['size']:,} passages of another corpus than the configured one "
                             f"({len(corpus):,} passages); run `multiret index` with this data config, or point index.dir at its index")
        flags = faiss.IO_FLAG_MMAP if mmap else 0
        return cls(faiss.read_index(str(directory / INDEX), flags), meta["corpus_ids"])


def require_gpu_faiss() -> None:
    """Fail with the fix when FAISS cannot place indexes on GPUs (the faiss-cpu wheel, or no visible GPU)."""
    if not hasattr(faiss, "StandardGpuResources"):
        raise RuntimeError(
            "index.device=gpu needs FAISS built with GPU support, but the installed FAISS is CPU-only; "
            'pip uninstall faiss-cpu && pip install "multiret[gpu]", or set index.device=cpu'
        )
    if faiss.get_num_gpus() == 0:
        raise RuntimeError("index.device=gpu but FAISS sees no GPU (check CUDA_VISIBLE_DEVICES), or set index.device=cpu")


def _gather(blocks: Sequence[np.ndarray], offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows (sorted, global numbering) picked out of consecutive blocks into one float32 array."""
    out = np.empty((len(rows), blocks[0].shape[1]), dtype=np.float32)
    which = np.searchsorted(offsets, rows, side="right") - 1
    for b, block in enumerate(blocks):
        mask = which == b
        out[mask] = block[rows[mask] - offsets[b]]
    return out

