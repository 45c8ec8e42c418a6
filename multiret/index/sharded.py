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

This module is the encoding itself (the Lightning module and its writer); the shard files and
their progress record are :mod:`multiret.index.shard_files`, the feeding of passages
:mod:`multiret.index.shard_loading`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from multiret.data.collator import PromptCollator
from multiret.data.corpus import Corpus
from multiret.index.encoding_settings import PRECISIONS, EncodingSettings
from multiret.index.faiss_index import DenseIndex
from multiret.index.shard_files import ShardProgress, load_shards
from multiret.index.shard_loading import PrefetchingCollate, ShardSampler, UnrecordedBatches
from multiret.index.token_cache import TokenCache
from multiret.model.biencoder import BiEncoder


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


def build_from_shards(directory: str | os.PathLike[str], corpus: Corpus, world_size: int, factory: str = "Flat",
                      train_sample: int | None = None) -> DenseIndex:
    """Rank 0's part: the FAISS index over the memory-mapped shards, saved next to them."""
    blocks = load_shards(directory, corpus, world_size)
    index = DenseIndex.build(blocks, corpus.id_digest(), factory, train_sample)
    index.save(directory, factory)
    return index
