"""Passages tokenised once: each encoded chunk's token ids kept on disk, so the next encoding of those passages skips the tokenizer.

A study encodes the same corpus once per trained model, and every encoding tokenised every
passage again, though only the weights changed. With ``index.tokens_dir`` set, the first
encoding of a chunk (the encoder's unit of resumption, ``multiret.index.sharded``) also writes
the chunk's batches' token ids to ``<tokens_dir>/<tokenizer key>/<passages digest>.npy``; an
encoding that finds the file reads its batches from it and never calls the tokenizer. The file
is named by the digest of the chunk's passage ids and texts (template included) inside a folder
named by the tokenizer and the length limit, so a changed corpus, template, tokenizer or limit
finds no file and tokenises again; nothing else is needed to invalidate it.

A file holds one row per passage: its token count, then its ids padded with the pad id
(``uint16`` when the vocabulary fits, as T5's and BERT's do: 2 bytes a token). A batch read back
is the collator's batch for the same passages (``tests/test_token_cache.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiret.atomic import publish, temporary_beside
from multiret.data.collator import PromptCollator
from multiret.errors import UserError
from multiret.index.encoding_settings import tokenizer_definition


def tokenizer_key(collator: PromptCollator) -> str:
    """A digest of what turns a passage into ids besides its text: the tokenizer's whole definition and the length limit."""
    tokenizer = collator.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"index.tokens_dir needs a fast tokenizer; {type(tokenizer).__name__} is not one: unset index.tokens_dir")
    if tokenizer.padding_side != "right":
        raise UserError(f"index.tokens_dir needs a tokenizer that pads on the right ({type(tokenizer).__name__} pads on the "
                        f"{tokenizer.padding_side}): unset index.tokens_dir")
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([collator.max_passage_length, tokenizer_definition(tokenizer)], sort_keys=True).encode())
    return digest.hexdigest()


class TokenCache:
    """One encoding's view of the cache: which of its chunks are tokenised on disk, and the files it writes for the others.

    ``chunks`` are the encoder's row ranges and ``digests`` their passages' digests. Batches
    never straddle two chunks (chunks hold whole batches), so a batch is read from, or written
    to, one chunk's file.
    """

    def __init__(self, directory: str | os.PathLike[str], collator: PromptCollator, chunks: Sequence[tuple[int, int]],
                 digests: Sequence[str]) -> None:
        self.folder = Path(directory) / tokenizer_key(collator)
        self.width = collator.max_passage_length
        self.pad = collator.tokenizer.pad_token_id
        self.dtype = np.dtype(np.uint16 if len(collator.tokenizer) <= 1 << 16 and self.width < 1 << 16 else np.int32)
        self.chunks, self.digests = list(chunks), list(digests)
        self.starts = [start for start, _ in self.chunks]
        self.cached = {i for i in range(len(self.chunks)) if self._readable(i)}
        self._maps: dict[int, np.ndarray] = {}
        self._building: dict[int, tuple[Path, np.memmap]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the description and map the files themselves; only the main process writes
        return {**self.__dict__, "_maps": {}, "_building": {}}

    def path(self, chunk: int) -> Path:
        return self.folder / f"{self.digests[chunk]}.npy"

    def _readable(self, chunk: int) -> bool:
        path = self.path(chunk)
        if not path.is_file():
            return False
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as error:
            raise UserError(f"{path}: not a readable token file ({error}); delete it and encode again") from None
        start, stop = self.chunks[chunk]
        return array.dtype == self.dtype and array.shape == (stop - start, self.width + 1)

    def _chunk_of(self, rows: np.ndarray) -> int:
        chunk = bisect_right(self.starts, int(rows[0])) - 1
        if chunk < 0 or rows.min() < self.chunks[chunk][0] or rows.max() >= self.chunks[chunk][1]:
            raise ValueError(f"rows {rows[:3].tolist()}... are not all in one chunk of the shard")
        return chunk

    def batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor] | None:
        """The collator's batch for ``rows`` read from the chunk's file; None when the chunk is not tokenised on disk."""
        rows = np.asarray(rows, dtype=np.int64)
        chunk = self._chunk_of(rows)
        if chunk not in self.cached:
            return None
        if chunk not in self._maps:
            self._maps[chunk] = np.load(self.path(chunk), mmap_mode="r")
        block = self._maps[chunk][rows - self.chunks[chunk][0]]
        lengths = block[:, 0].astype(np.int64)
        longest = int(lengths.max())
        ids = torch.from_numpy(block[:, 1:1 + longest].astype(np.int64))
        mask = torch.from_numpy((np.arange(longest) < lengths[:, None]).astype(np.int64))
        return {"input_ids": ids, "attention_mask": mask}

    def record(self, rows: np.ndarray, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Write a tokenised batch (on any device) into its chunk's file under construction; nothing when the chunk came from disk."""
        chunk = self._chunk_of(rows)
        if chunk in self.cached:
            return
        if chunk not in self._building:
            start, stop = self.chunks[chunk]
            # a name of its own: two runs (on two nodes of a shared file system) may build one chunk at once
            tmp = temporary_beside(self.path(chunk))
            self._building[chunk] = tmp, np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype,
                                                                    shape=(stop - start, self.width + 1))
        array = self._building[chunk][1]
        local = rows - self.chunks[chunk][0]
        array[local, 0] = attention_mask.sum(dim=1).cpu().numpy()
        array[local, 1:] = self.pad
        array[local, 1:1 + input_ids.shape[1]] = input_ids.cpu().numpy()  # padded on the right with the pad id already

    def finish(self, chunks: Iterable[int]) -> None:
        """Move the files of these chunks, now encoded whole, into place (a later encoding reads them)."""
        for chunk in chunks:
            if chunk not in self._building:
                continue
            tmp, array = self._building.pop(chunk)
            array.flush()
            del array
            publish(tmp, self.path(chunk))

    def discard(self) -> None:
        """Delete the files of chunks left unfinished (an encoding that failed, or was cut short by ``limit_predict_batches``)."""
        for tmp, _ in self._building.values():
            tmp.unlink(missing_ok=True)
        self._building.clear()
