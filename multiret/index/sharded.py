"""Corpus encoding sharded over DDP processes: each rank writes one contiguous shard, rank 0 builds the index.

KILT's 36M passages take hours on one GPU; under ``trainer=ddp`` every process encodes
``len(corpus) / world_size`` consecutive passages through ``trainer.predict`` and writes them,
memory-mapped and atomically, to ``<index.dir>/shards/``. Rank 0 then memory-maps the shards
in order and builds the FAISS index from them. A shard whose file and description are already
there, for the same weights and passages, is not encoded again on a re-run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, DistributedSampler

from multiret.data.collator import PromptCollator
from multiret.data.corpus import Corpus
from multiret.data.jsonl import atomic_write_text
from multiret.errors import UserError
from multiret.index.faiss_index import DenseIndex
from multiret.model.biencoder import BiEncoder

SHARDS = "shards"


def shard_bounds(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``rank``: contiguous, no padding, the first ``size % world_size`` ranks get one more."""
    if size < world_size:
        raise UserError(f"the corpus has {size} passages, fewer than the {world_size} processes; index it with one process")
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard_paths(directory: str | os.PathLike[str], rank: int, world_size: int) -> tuple[Path, Path]:
    """The shard's embeddings (``.npy``) and its description (``.json``, written last: its presence means complete)."""
    stem = Path(directory) / SHARDS / f"embeddings-{rank:05d}-of-{world_size:05d}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def encoding_key(model: BiEncoder, collator: PromptCollator) -> str:
    """A digest of what decides a passage's embedding besides its text: the passage encoder's weights and length limit."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(collator.max_passage_length).encode())
    for name, tensor in model.passage_encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shard_description(corpus: Corpus, start: int, stop: int, key: str) -> dict[str, Any]:
    """What a shard holds: its rows, a digest of their ids and texts, and the encoding key."""
    digest = hashlib.blake2b(digest_size=16)
    for row in range(start, stop):
        digest.update(f"{corpus.ids[row]}\t{corpus.passage_text(row)}\n".encode())
    return {"start": start, "stop": stop, "passages": digest.hexdigest(), "encoding": key}


def shard_is_complete(directory: str | os.PathLike[str], rank: int, world_size: int, description: dict[str, Any]) -> bool:
    """True when the shard was written whole for exactly these rows, passages and weights."""
    array_path, json_path = shard_paths(directory, rank, world_size)
    if not (array_path.is_file() and json_path.is_file()):
        return False
    if json.loads(json_path.read_text(encoding="utf-8")) != description:
        return False
    return np.load(array_path, mmap_mode="r").shape[0] == description["stop"] - description["start"]


class ShardSampler(DistributedSampler):
    """This rank's contiguous rows, longest text first (less padding); empty when the shard is already complete.

    Being a ``DistributedSampler``, Lightning keeps it as is instead of injecting its own
    sampler, which would interleave the rows across ranks.
    """

    def __init__(self, corpus: Corpus, rank: int, world_size: int, skip: bool) -> None:
        super().__init__(range(len(corpus)), num_replicas=world_size, rank=rank, shuffle=False)
        start, stop = shard_bounds(len(corpus), world_size, rank)
        self.rows = [] if skip else sorted(range(start, stop), key=lambda r: -len(corpus.passage_text(r)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


class CorpusEncoder(L.LightningModule):
    """Wraps the bi-encoder for ``trainer.predict``: each rank embeds its shard of the corpus."""

    def __init__(self, model: BiEncoder, corpus: Corpus, collator: PromptCollator, directory: str | os.PathLike[str],
                 batch_size: int) -> None:
        super().__init__()
        self.model = model
        self.corpus = corpus
        self.collator = collator
        self.directory = Path(directory)
        self.batch_size = batch_size
        self.key = encoding_key(model, collator)
        self._description: dict[str, Any] | None = None
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a complete shard leaves its rank nothing to do

    def description(self) -> dict[str, Any]:
        """This rank's shard description (computed once: it hashes every passage of the shard)."""
        if self._description is None:
            start, stop = shard_bounds(len(self.corpus), self.trainer.world_size, self.trainer.global_rank)
            self._description = shard_description(self.corpus, start, stop, self.key)
        return self._description

    def predict_dataloader(self) -> DataLoader:
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        done = shard_is_complete(self.directory, rank, world_size, self.description())
        sampler = ShardSampler(self.corpus, rank, world_size, skip=done)
        return DataLoader(range(len(self.corpus)), batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate)

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        batch = self.collator.passages([self.corpus.passage_text(r) for r in rows])
        return {**batch, "rows": torch.tensor(rows, dtype=torch.long)}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        # no autocast: the same float32 embeddings as the one-process path (multiret.index.dense.index_corpus)
        with torch.autocast(self.device.type, enabled=False):
            vectors = self.model.encode_passages(batch["input_ids"], batch["attention_mask"])
        return batch["rows"].cpu(), vectors.float().cpu()


class ShardWriter(BasePredictionWriter):
    """Writes each batch's embeddings into the rank's memory-mapped shard; renamed into place and described at the end."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self._array: np.memmap | None = None
        self._start = 0
        self._written = 0

    def _paths(self, trainer: L.Trainer) -> tuple[Path, Path, Path]:
        array_path, json_path = shard_paths(trainer.lightning_module.directory, trainer.global_rank, trainer.world_size)
        return array_path, json_path, array_path.with_name(f".{array_path.name}.tmp")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        rows, vectors = prediction
        if self._array is None:
            description = pl_module.description()
            _, json_path, tmp = self._paths(trainer)
            json_path.unlink(missing_ok=True)  # the shard is incomplete until its description is written again
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self._start = description["start"]
            shape = (description["stop"] - description["start"], vectors.shape[1])
            self._array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            self._written = 0
        self._array[rows.numpy() - self._start] = vectors.numpy()
        self._written += len(rows)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._array is None:
            return  # the shard was complete already
        self._array.flush()
        size, self._array = len(self._array), None
        array_path, json_path, tmp = self._paths(trainer)
        if self._written != size:
            raise RuntimeError(f"{tmp}: {self._written} of the shard's {size} passages were encoded; "
                               "unset trainer.limit_predict_batches and run the index stage again")
        os.replace(tmp, array_path)
        atomic_write_text(json_path, json.dumps(pl_module.description()))


def encode_shards(trainer: L.Trainer, model: BiEncoder, corpus: Corpus, collator: PromptCollator,
                  directory: str | os.PathLike[str], batch_size: int = 64) -> None:
    """Every process encodes its shard (``trainer`` must carry a :class:`ShardWriter`), then all wait for each other."""
    if not any(isinstance(c, ShardWriter) for c in trainer.callbacks):
        raise ValueError("encode_shards needs a trainer built with callbacks=[ShardWriter()]")
    trainer.predict(CorpusEncoder(model, corpus, collator, directory, batch_size), return_predictions=False)
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
    """Rank 0's part: the FAISS index over the memory-mapped shards, saved next to them (no ``embeddings.npy``)."""
    blocks = load_shards(directory, corpus, world_size)
    index = DenseIndex.build(blocks, list(corpus.ids), factory, train_sample)
    index.save(directory, None, factory)
    return index
