"""Dense passage index: embeddings saved as ``.npy`` + ids, searched with FAISS."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from multiret.data.jsonl import atomic_write_text
from multiret.index.faiss_build import import_faiss

faiss = import_faiss()

EMBEDDINGS = "embeddings.npy"
IDS = "ids.txt"
INDEX = "index.faiss"
META = "index.json"
ADD_CHUNK = 1 << 18  # rows converted and added at a time, so memory-mapped shards are never copied whole
DEVICES = ("cpu", "gpu")
GPU_PLACEMENTS = ("replicated", "sharded")


class DenseIndex:
    """A FAISS inner-product index over passage embeddings (``Flat`` = exact search by default).

    Any FAISS factory string works (e.g. ``IVF65536,PQ64`` for KILT's 36M passages); indexes
    that need training are trained on the embeddings, or on a seeded random sample of
    ``train_sample`` of them. ``search_parameters`` is a FAISS ParameterSpace string applied
    before searching (``nprobe=128`` for IVF indexes).
    """

    def __init__(self, index: faiss.Index, ids: list[str]) -> None:
        if index.ntotal != len(ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
        self.index = index
        self.ids = ids
        self.on_gpu = False

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray | Sequence[np.ndarray],
        ids: list[str],
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
        return cls(index, ids)

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
        """Top-``k`` ``(scores, rows)`` per query; rows index :attr:`ids` (-1 where fewer than k exist)."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))

    def save(self, directory: str | os.PathLike[str], embeddings: np.ndarray | None, factory: str) -> None:
        """Write embeddings, ids, the FAISS index and its description; each file atomically.

        ``embeddings=None`` (sharded encoding, whose shards stay in ``shards/``) removes an older
        ``embeddings.npy`` so that the folder never holds embeddings of another index; a memory
        map of this folder's ``embeddings.npy`` (streamed there by the encoder) is left in place.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if embeddings is None:
            (directory / EMBEDDINGS).unlink(missing_ok=True)
        elif not (isinstance(embeddings, np.memmap) and Path(str(embeddings.filename)).resolve() == (directory / EMBEDDINGS).resolve()):
            _atomic(directory / EMBEDDINGS, lambda tmp: _save_npy(tmp, embeddings))
        atomic_write_text(directory / IDS, "".join(f"{i}\n" for i in self.ids))
        _atomic(directory / INDEX, lambda tmp: faiss.write_index(self.index, str(tmp)))
        atomic_write_text(directory / META, json.dumps({"factory": factory, "size": len(self.ids), "dim": int(self.index.d)}))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DenseIndex:
        directory = Path(directory)
        missing = [name for name in (IDS, INDEX, META) if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a multiret index (missing {', '.join(missing)}); run `multiret index` first")
        ids = (directory / IDS).read_text(encoding="utf-8").splitlines()
        return cls(faiss.read_index(str(directory / INDEX)), ids)


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


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle, so NumPy does not append ".npy" to the temporary name
        np.save(handle, array)
