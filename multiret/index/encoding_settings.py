"""How passages become vectors: the encoding settings and the one signature of everything that changes a vector.

Finished shards and chunks are reused when their recorded signature equals the current one
(:mod:`multiret.index.sharded`), and the README invites pointing ``index.dir`` at an old run's
index: so the signature must change with every setting that changes a passage vector. The passage
text itself (template included) is digested next to it, per chunk, by the shard writer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from multiret.data.collator import PromptCollator
from multiret.model.biencoder import BiEncoder

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}  # index.precision: the encoder's arithmetic (None: no autocast)
CHUNK_ROWS = 1 << 18  # passages encoded between two completion records (and whose texts are held at once)
VECTOR_ATTRIBUTES = ("pooling", "normalize")  # TextEncoder settings that change a vector (not state_dict entries)
UNSIGNED_CONFIG_KEYS = ("_name_or_path", "transformers_version")  # where a model was read from and by what: not what it computes


def tokenizer_definition(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What turns a text into ids: a fast tokenizer's whole definition (a slow one's vocabulary), its class and padding."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        rules: Any = json.loads(backend.to_str())
        rules["truncation"] = rules["padding"] = None  # set per call by transformers, not part of the tokenizer
    else:
        rules = sorted(tokenizer.get_vocab().items())
    return {"class": type(tokenizer).__name__, "pad_token_id": tokenizer.pad_token_id,
            "padding_side": tokenizer.padding_side, "rules": rules}


@dataclass(frozen=True)
class EncodingSettings:
    """``conf/index``'s encoding settings; :meth:`signature` adds the model's and the collator's part.

    ``precision`` changes the vectors (and is signed); ``batch_size``, ``num_workers``,
    ``tokens_dir`` and ``chunk_rows`` only change how fast they come.
    """

    precision: str = "float32"
    batch_size: int = 64
    num_workers: int = 0
    tokens_dir: str | Path | None = None
    chunk_rows: int = CHUNK_ROWS

    @classmethod
    def from_config(cls, index: Mapping[str, Any]) -> EncodingSettings:
        """The settings of a ``conf/index`` node (``index.precision``, ``batch_size``, ``num_workers``, ``tokens_dir``)."""
        return cls(precision=index.get("precision", "float32"), batch_size=index.get("batch_size", 64),
                   num_workers=index.get("num_workers", 0), tokens_dir=index.get("tokens_dir"))

    def signature(self, model: BiEncoder, collator: PromptCollator) -> str:
        """A digest of everything besides the passage text that decides its vector.

        The passage encoder's weights, architecture (its config), pooling and normalisation;
        the tokenizer and the passage length limit; the arithmetic. Query prompts and templates
        never reach a passage (:class:`PromptCollator`), so they are not signed.
        """
        encoder = model.passage_encoder
        config = {k: v for k, v in encoder.model.config.to_dict().items() if k not in UNSIGNED_CONFIG_KEYS}
        described = {
            "encoder": {name: getattr(encoder, name) for name in VECTOR_ATTRIBUTES},
            "config": config,
            "tokenizer": tokenizer_definition(collator.tokenizer),
            "max_passage_length": collator.max_passage_length,
            "precision": self.precision,
        }
        digest = hashlib.blake2b(json.dumps(described, sort_keys=True, default=str).encode(), digest_size=16)
        for name, tensor in encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
