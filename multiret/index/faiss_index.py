"""Dense passage index: embeddings saved as ``.npy`` + ids, searched with FAISS."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from multiret.data.jsonl import atomic_write_text

EMBEDDINGS = "embeddings.npy"
IDS = "ids.txt"
INDEX = "index.faiss"
META = "index.json"


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

    @classmethod
    def build(
        cls, embeddings: np.ndarray, ids: list[str], factory: str = "Flat", train_sample: int | None = None
    ) -> DenseIndex:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            sample = embeddings
            if train_sample is not None and train_sample < len(embeddings):
                rows = np.sort(np.random.default_rng(0).choice(len(embeddings), train_sample, replace=False))
                sample = embeddings[rows]
            index.train(sample)
        index.add(embeddings)
        return cls(index, ids)

    def set_search_parameters(self, parameters: str | None) -> None:
        """Apply a FAISS ParameterSpace string such as ``nprobe=128`` (``None``: the index's defaults)."""
        if parameters:
            faiss.ParameterSpace().set_index_parameters(self.index, parameters)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` per query; rows index :attr:`ids` (-1 where fewer than k exist)."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))

    def save(self, directory: str | os.PathLike[str], embeddings: np.ndarray, factory: str) -> None:
        """Write embeddings, ids, the FAISS index and its description; each file atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic(directory / EMBEDDINGS, lambda tmp: _save_npy(tmp, embeddings))
        atomic_write_text(directory / IDS, "".join(f"{i}\n" for i in self.ids))
        _atomic(directory / INDEX, lambda tmp: faiss.write_index(self.index, str(tmp)))
        atomic_write_text(directory / META, json.dumps({"factory": factory, "size": len(self.ids), "dim": int(embeddings.shape[1])}))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DenseIndex:
        directory = Path(directory)
        missing = [name for name in (IDS, INDEX, META) if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a multiret index (missing {', '.join(missing)}); run `multiret index` first")
        ids = (directory / IDS).read_text(encoding="utf-8").splitlines()
        return cls(faiss.read_index(str(directory / INDEX)), ids)


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
