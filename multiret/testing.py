"""Test support: tiny random T5 and BERT models with word-level tokenizers trained on the spot.

Nothing can be downloaded in tests or CI, so the test suite and ``benchmarks/`` build their
models here: real Hugging Face architectures and tokenizers, a few thousand parameters. It
is part of the package (not of tests/) because the benchmarks use it too; no stage imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5Model,
)

T5_SENTINELS = tuple(f"<extra_id_{i}>" for i in range(4))


def _word_tokenizer(texts: Iterable[str], specials: list[str], unk: str) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    return tokenizer


def build_tiny_t5(
    out: Path, texts: Iterable[str], d_model: int = 32, layers: int = 2, heads: int = 4, seed: int = 0
) -> Path:
    """Save a random T5 (pad=0, eos=1, sentinels ``<extra_id_i>``) and its tokenizer to ``out``.

    Weights are drawn from ``seed``; ``d_model=768, layers=12, heads=12`` gives T5-base's encoder
    shape (with a small vocabulary).
    """
    raw = _word_tokenizer(texts, ["<pad>", "</s>", "<unk>", *T5_SENTINELS], "<unk>")
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=list(T5_SENTINELS),
    )
    tokenizer.save_pretrained(out)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=4 * d_model, num_layers=layers,
        num_decoder_layers=1, num_heads=heads, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(seed)
    T5Model(config).save_pretrained(out)
    return out


def build_tiny_bert(out: Path, texts: Iterable[str], hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a random BERT (weights drawn from ``seed``) and a tokenizer that wraps inputs in ``[CLS] ... [SEP]``."""
    raw = _word_tokenizer(texts, ["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[UNK]")
    raw.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=2 * hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out)
    return out
