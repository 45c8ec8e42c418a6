"""A shard on disk: which rows each process encodes, where its files are, which chunks are done, reading them back.

The layout of ``<index.dir>/shards/`` that :mod:`multiret.index.sharded` writes: one
``embeddings-RRRRR-of-WWWWW.npy`` per process with its ``.json`` description (written last), and
while a shard is unfinished a memory-mapped temporary file and its record of finished chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from multiret.atomic import atomic_write_text
from multiret.data.corpus import Corpus
from multiret.errors import UserError
from multiret.index.encoding_settings import CHUNK_ROWS

SHARDS = "shards"


def shard_bounds(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``rank``: contiguous, no padding, the first ``size % world_size`` ranks get one more."""
    if size == 0:
        raise ValueError("nothing to encode: the corpus is empty")
    if size < world_size:
        raise UserError(f"the corpus has {size} passages, fewer than the {world_size} processes; index it with one process")
    return contiguous_share(size, world_size, rank)


def contiguous_share(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """Items ``[start, stop)`` of ``rank``: contiguous, the first ``size % world_size`` processes get one more (may be none)."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard_paths(directory: str | os.PathLike[str], rank: int, world_size: int) -> tuple[Path, Path]:
    """The shard's embeddings (``.npy``) and its description (``.json``, written last: its presence means complete)."""
    stem = Path(directory) / SHARDS / f"embeddings-{rank:05d}-of-{world_size:05d}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def progress_paths(directory: str | os.PathLike[str], rank: int, world_size: int) -> tuple[Path, Path]:
    """An unfinished shard's memory-mapped embeddings and its record of the chunks written into them."""
    array_path, _ = shard_paths(directory, rank, world_size)
    return array_path.with_name(f".{array_path.name}.tmp"), array_path.with_name(f".{array_path.stem}.chunks.json")


def passages_digest(corpus: Corpus, start: int, stop: int) -> str:
    """A digest of rows ``[start, stop)``: their ids and the texts the passage encoder sees."""
    digest = hashlib.blake2b(digest_size=16)
    for row in range(start, stop):
        digest.update(f"{corpus.ids[row]}\t{corpus.passage_text(row)}\n".encode())
    return digest.hexdigest()


def shard_is_complete(directory: str | os.PathLike[str], rank: int, world_size: int, description: dict[str, Any]) -> bool:
    """True when the shard was written whole for exactly these rows, passages and weights."""
    array_path, json_path = shard_paths(directory, rank, world_size)
    if not (array_path.is_file() and json_path.is_file()):
        return False
    if json.loads(json_path.read_text(encoding="utf-8")) != description:
        return False
    return np.load(array_path, mmap_mode="r").shape[0] == description["stop"] - description["start"]


class ShardProgress:
    """One process's shard on disk: which of its chunks are encoded, batches written into it, the shard finished.

    A chunk counts as encoded when the progress record names it with the digest of its
    passages, for this shard's rows and encoding key, and the temporary file is still there.
    """

    def __init__(self, directory: str | os.PathLike[str], corpus: Corpus, rank: int, world_size: int, key: str,
                 chunk_rows: int = CHUNK_ROWS) -> None:
        self.array_path, self.json_path = shard_paths(directory, rank, world_size)
        self.tmp, self.record_path = progress_paths(directory, rank, world_size)
        self.start, self.stop = shard_bounds(len(corpus), world_size, rank)
        self.chunk_rows = chunk_rows
        self.chunks = [(a, min(a + chunk_rows, self.stop)) for a in range(self.start, self.stop, chunk_rows)]
        self.digests = [passages_digest(corpus, a, b) for a, b in self.chunks]
        self.key = key
        combined = hashlib.blake2b("".join(self.digests).encode(), digest_size=16).hexdigest()
        self.description = {"start": self.start, "stop": self.stop, "passages": combined, "encoding": key}
        self.complete = shard_is_complete(directory, rank, world_size, self.description)
        self.done = set(range(len(self.chunks))) if self.complete else self._recorded()
        self.remaining = np.array([b - a for a, b in self.chunks], dtype=np.int64)
        self.remaining[sorted(self.done)] = 0
        self._array: np.memmap | None = None

    def pending(self) -> list[tuple[int, int]]:
        """The chunks still to encode, in row order."""
        return [chunk for i, chunk in enumerate(self.chunks) if i not in self.done]

    def _recorded(self) -> set[int]:
        if not (self.record_path.is_file() and self.tmp.is_file()):
            return set()
        record = json.loads(self.record_path.read_text(encoding="utf-8"))
        if (record["start"], record["stop"], record["encoding"]) != (self.start, self.stop, self.key):
            return set()
        if np.load(self.tmp, mmap_mode="r").shape[0] != self.stop - self.start:
            return set()
        return {i for i, (a, _) in enumerate(self.chunks) if record["chunks"].get(str(a)) == self.digests[i]}

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> list[int]:
        """Put a batch's embeddings in place; record every chunk this batch completes (after flushing the file) and return them."""
        if self._array is None:
            self._open(vectors.shape[1])
        assert self._array is not None
        self._array[rows - self.start] = vectors
        counts = np.bincount((rows - self.start) // self.chunk_rows, minlength=len(self.chunks))
        before = self.remaining > 0
        self.remaining -= counts
        finished = np.flatnonzero(before & (self.remaining == 0))
        if len(finished):
            self._array.flush()
            self.done.update(int(i) for i in finished)
            record = {"start": self.start, "stop": self.stop, "encoding": self.key,
                      "chunks": {str(self.chunks[i][0]): self.digests[i] for i in sorted(self.done)}}
            atomic_write_text(self.record_path, json.dumps(record))
        return finished.tolist()

    def _open(self, dim: int) -> None:
        self.json_path.unlink(missing_ok=True)  # the shard is incomplete until its description is written again
        if self.done:
            self._array = np.load(self.tmp, mmap_mode="r+")
            return
        self.record_path.unlink(missing_ok=True)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self._array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(self.stop - self.start, dim))

    def finish(self) -> None:
        """Rename the whole shard into place and describe it; fails (keeping the finished chunks) if rows are missing."""
        if self.complete:
            return
        size, missing = self.stop - self.start, int(self.remaining.sum())
        if missing:
            raise RuntimeError(f"{self.tmp}: {size - missing} of the shard's {size} passages were encoded; "
                               "unset trainer.limit_predict_batches and run the index stage again")
        if self._array is not None:
            self._array.flush()
            self._array = None
        os.replace(self.tmp, self.array_path)
        atomic_write_text(self.json_path, json.dumps(self.description))
        self.record_path.unlink(missing_ok=True)
        self.complete = True


def load_shards(directory: str | os.PathLike[str], corpus: Corpus, world_size: int) -> list[np.ndarray]:
    """The shards, memory-mapped, in corpus order; fails naming the first one that is missing or does not fit."""
    blocks = []
    for rank in range(world_size):
        array_path, json_path = shard_paths(directory, rank, world_size)
        start, stop = shard_bounds(len(corpus), world_size, rank)
        if not json_path.is_file():
            raise FileNotFoundError(f"{array_path}: shard {rank} of {world_size} was not written completely; run the index stage again")
        described = json.loads(json_path.read_text(encoding="utf-8"))
        block = np.load(array_path, mmap_mode="r")
        if (described["start"], described["stop"], block.shape[0]) != (start, stop, stop - start):
            raise ValueError(f"{array_path}: holds rows {described['start']}..{described['stop']} ({block.shape[0]}) "
                             f"but shard {rank} of {world_size} is rows {start}..{stop}; delete {Path(directory) / SHARDS} and re-run")
        blocks.append(block)
    return blocks
