"""Corpus encoding in shards and chunks: each process writes one contiguous shard, the first builds the index.

Under ``trainer=ddp`` every process encodes ``len(corpus) / world_size`` consecutive passages
through ``trainer.predict``; with one process its shard is the whole corpus. A shard is encoded
``chunk_rows`` passages at a time into a memory-mapped temporary file in
``<index.dir>/shards/``; after each chunk the file is flushed and the chunk recorded (rows, a
digest of their passages, the encoding key), so an interrupted run keeps the chunks it finished
and a re-run encodes only the others. A whole shard is renamed into place and its description
(``.json``) written last; a shard already there for the same passages and encoding signature
(:meth:`EncodingSettings.signature`: weights, pooling, normalisation, tokenizer, length limit,
precision) is not encoded again. The first process then memory-maps the shards in order and builds the FAISS index.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from multiret.atomic import atomic_write_text
from multiret.data.collator import PromptCollator
from multiret.data.corpus import Corpus
from multiret.errors import UserError
from multiret.index.encoding_settings import CHUNK_ROWS, PRECISIONS, EncodingSettings
from multiret.index.faiss_index import DenseIndex
from multiret.index.token_cache import TokenCache
from multiret.model.biencoder import BiEncoder

SHARDS = "shards"


def shard_bounds(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``rank``: contiguous, no padding, the first ``size % world_size`` ranks get one more."""
    if size == 0:
        raise ValueError("nothing to encode: the corpus is empty")
    if size < world_size:
        raise UserError(f"the corpus has {size} passages, fewer than the {world_size} processes; index it with one process")
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


class ShardSampler(Sampler[int]):
    """This rank's rows of the chunks still to encode, chunk by chunk, longest passage first within a chunk (less padding)."""

    def __init__(self, corpus: Corpus, chunks: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.corpus = corpus
        self.chunks = list(chunks)

    def __iter__(self) -> Iterator[int]:
        for start, stop in self.chunks:
            yield from (start + np.argsort(-self.corpus.passage_lengths(start, stop), kind="stable")).tolist()

    def __len__(self) -> int:
        return sum(stop - start for start, stop in self.chunks)


class PrefetchingCollate:
    """A DataLoader's ``collate_fn`` that tokenises the next batches in a thread while the model encodes this one.

    With no DataLoader worker processes the batches would be tokenised between forwards; the
    fast tokenizer and the forward both release the GIL, so one thread overlaps them without a
    process start-up or a copy of the tokenizer. The batches are read off the same sampler in
    the same order, so each call's rows are the batch tokenised ahead (checked).
    """

    def __init__(self, collate: Callable[[list[int]], dict[str, torch.Tensor]], sampler: Iterable[int], batch_size: int,
                 depth: int = 2) -> None:
        rows = iter(sampler)
        self.collate, self.depth = collate, depth
        self.upcoming = iter(lambda: list(islice(rows, batch_size)), [])
        self.pending: deque[tuple[list[int], Future]] = deque()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tokenize")

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        while len(self.pending) < self.depth and (batch := next(self.upcoming, None)) is not None:
            self.pending.append((batch, self.executor.submit(self.collate, batch)))
        expected, future = self.pending.popleft() if self.pending else (None, None)
        if expected != rows:
            raise RuntimeError(f"the DataLoader asked for rows {rows[:3]}... but the next batch tokenised ahead is "
                               f"{(expected or [])[:3]}...: the sampler must yield the same order on every pass")
        return future.result()

    def close(self) -> None:
        """Stop the thread (batches tokenised ahead and not asked for, e.g. under ``limit_predict_batches``, are dropped)."""
        self.executor.shutdown(cancel_futures=True)


class CorpusEncoder(L.LightningModule):
    """Wraps the bi-encoder for ``trainer.predict``: each rank embeds the chunks of its shard that are not on disk yet."""

    def __init__(self, model: BiEncoder, corpus: Corpus, collator: PromptCollator, directory: str | os.PathLike[str],
                 settings: EncodingSettings) -> None:
        super().__init__()
        self.autocast_dtype = PRECISIONS[settings.precision]
        self.model = model
        self.corpus = corpus
        self.collator = collator
        self.directory = Path(directory)
        self.batch_size = settings.batch_size
        self.num_workers = settings.num_workers
        self.tokens_dir = settings.tokens_dir
        # whole batches per chunk, so a resumed run batches every chunk exactly as an uninterrupted one
        self.chunk_rows = max(settings.batch_size, settings.chunk_rows - settings.chunk_rows % settings.batch_size)
        self.key = settings.signature(model, collator)
        self.progress: ShardProgress | None = None
        self.tokens: TokenCache | None = None  # with index.tokens_dir: the chunks' token ids on disk
        self.prefetch: PrefetchingCollate | None = None  # with num_workers=0: the thread tokenising ahead
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a complete shard leaves its rank nothing to do

    def predict_dataloader(self) -> DataLoader:
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        self.progress = ShardProgress(self.directory, self.corpus, rank, world_size, self.key, self.chunk_rows)
        if not self.progress.pending():
            self.progress.finish()  # every chunk was recorded before an interruption: only the rename was left (no batch runs)
        if self.tokens_dir is not None:
            self.tokens = TokenCache(self.tokens_dir, self.collator, self.progress.chunks, self.progress.digests)
        sampler = ShardSampler(self.corpus, self.progress.pending())
        if self.num_workers:
            loader = DataLoader(range(len(self.corpus)), batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate,
                                num_workers=self.num_workers, prefetch_factor=4)
        else:
            self.prefetch = PrefetchingCollate(self.collate, sampler, self.batch_size)
            loader = DataLoader(range(len(self.corpus)), batch_size=self.batch_size, sampler=sampler, collate_fn=self.prefetch)
        return UnrecordedBatches(loader)

    def on_predict_end(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        batch = self.tokens.batch(rows) if self.tokens is not None else None
        if batch is None:
            batch = self.collator.passages([self.corpus.passage_text(r) for r in rows])
        return {**batch, "rows": torch.tensor(rows, dtype=torch.long)}

    def write_batch(self, batch: dict[str, torch.Tensor], rows: torch.Tensor, vectors: torch.Tensor) -> None:
        """Write a batch's embeddings into the shard (and, with a token cache, its token ids); close the chunks it finished."""
        if self.tokens is not None:
            self.tokens.record(rows.numpy(), batch["input_ids"], batch["attention_mask"])
        finished = self.progress.write(rows.numpy(), vectors.numpy())
        if self.tokens is not None:
            self.tokens.finish(finished)

    def finish_shard(self) -> None:
        """Rename the whole shard into place (refused when it was cut short) and write its description."""
        self.progress.finish()

    def discard_unfinished(self) -> None:
        """After a failure: the token files being built are incomplete (the finished ones, and the shard's chunks, stay)."""
        if self.tokens is not None:
            self.tokens.discard()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        # index.precision alone decides (not trainer.precision): the same embeddings under any number of processes
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            vectors = self.model.encode_passages(batch["input_ids"], batch["attention_mask"])
        return batch["rows"].cpu(), vectors.float().cpu()


class UnrecordedBatches:
    """A DataLoader that Lightning's predict loop iterates as it is, without recording the rows of every batch.

    Lightning rebuilds a predict ``DataLoader`` around a batch sampler that keeps each batch's
    indices for prediction writers: a Python int per passage, 43 bytes measured, which for KILT's
    36M passages is 1.5 GB held until encoding ends. Any other iterable is left alone; the rows
    travel in the batch itself (``rows``), and each rank's sampler is already its shard.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class ShardWriter(L.Callback):
    """Hands each batch's embeddings to the :class:`CorpusEncoder` that made them, to write; finishes the shard at the end."""

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        rows, vectors = outputs
        encoder(pl_module).write_batch(batch, rows, vectors)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        encoder(pl_module).finish_shard()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        encoder(pl_module).discard_unfinished()


def encoder(pl_module: L.LightningModule) -> CorpusEncoder:
    """The module a :class:`ShardWriter` serves: only a :class:`CorpusEncoder` knows where its shard goes."""
    if not isinstance(pl_module, CorpusEncoder):
        raise TypeError(f"ShardWriter writes the shards of a CorpusEncoder, not of a {type(pl_module).__name__}")
    return pl_module


def encode_shards(trainer: L.Trainer, model: BiEncoder, corpus: Corpus, collator: PromptCollator,
                  directory: str | os.PathLike[str], settings: EncodingSettings) -> None:
    """Every process encodes its shard (``trainer`` must carry a :class:`ShardWriter`), then all wait for each other.

    ``settings.num_workers`` DataLoader processes tokenise the next batches while the model encodes (0: one thread does);
    ``settings.precision`` "bfloat16" runs the encoder under autocast (the stored embeddings are float32 either way);
    ``settings.tokens_dir`` keeps each chunk's token ids for the next encoding of the same passages
    (:mod:`multiret.index.token_cache`).
    """
    if not any(isinstance(c, ShardWriter) for c in trainer.callbacks):
        raise ValueError("encode_shards needs a trainer built with callbacks=[ShardWriter()]")
    trainer.predict(CorpusEncoder(model, corpus, collator, directory, settings), return_predictions=False)
    trainer.strategy.barrier("corpus shards written")


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


def build_from_shards(directory: str | os.PathLike[str], corpus: Corpus, world_size: int, factory: str = "Flat",
                      train_sample: int | None = None) -> DenseIndex:
    """Rank 0's part: the FAISS index over the memory-mapped shards, saved next to them."""
    blocks = load_shards(directory, corpus, world_size)
    index = DenseIndex.build(blocks, corpus.id_digest(), factory, train_sample)
    index.save(directory, factory)
    return index
