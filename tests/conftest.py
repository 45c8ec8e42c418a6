"""Shared fixtures: a tiny random T5 and BERT with tokenizers trained here, and a tiny KILT-format dataset."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, T5Config, T5Model

from multiret.data.jsonl import atomic_write_text, write_jsonl

WORDS = [f"w{i}" for i in range(120)]
NUM_PAGES = 40
SENTINELS = [f"<extra_id_{i}>" for i in range(4)]


def _page_words(page: int) -> list[str]:
    rng = random.Random(page)
    return rng.sample(WORDS, 12)


def _texts() -> list[str]:
    return [" ".join(_page_words(p)) for p in range(NUM_PAGES)] + ["QA EL qa el Title Text"]


def _wordlevel_tokenizer(specials: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>" if "<unk>" in specials else "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=specials)
    tokenizer.train_from_iterator(_texts(), trainer)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random T5 whose tokenizer (trained here) has pad=0, eos=1 and sentinel tokens."""
    out = tmp_path_factory.mktemp("tiny-t5")
    raw = _wordlevel_tokenizer(["<pad>", "</s>", "<unk>", *SENTINELS])
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", additional_special_tokens=SENTINELS
    )
    tokenizer.save_pretrained(out)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    T5Model(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT with a word-level tokenizer that adds [CLS] ... [SEP]."""
    out = tmp_path_factory.mktemp("tiny-bert")
    raw = _wordlevel_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.save_pretrained(out)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(out)
    return out


def _record(qid: str, text: str, pages: list[int]) -> dict:
    return {
        "id": qid,
        "input": text,
        "output": [{"answer": f"Page {p}", "provenance": [{"wikipedia_id": str(p), "title": f"Page {p}"}]} for p in pages],
    }


@pytest.fixture(scope="session")
def kilt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two KILT-format tasks over a 40-page corpus: `qa` quotes words of its page, `el` of the next page."""
    out = tmp_path_factory.mktemp("kilt")
    rows = ["id\ttext\ttitle\twikipedia_id"]
    for page in range(NUM_PAGES):
        words = _page_words(page)
        rows.append(f"{page}_0\t{' '.join(words[:6])}\tPage {page}\t{page}")
        rows.append(f"{page}_1\t{' '.join(words[6:])}\tPage {page}\t{page}")
    atomic_write_text(out / "corpus.tsv", "\n".join(rows) + "\n")
    rng = random.Random(0)
    for task, shift in (("qa", 0), ("el", 1)):
        for split, pages in (("train", range(NUM_PAGES)), ("dev", range(0, NUM_PAGES, 4))):
            records = []
            for page in pages:
                target = (page + shift) % NUM_PAGES
                words = rng.sample(_page_words(target)[:6], 3)
                records.append(_record(f"{task}-{split}-{page}", " ".join(words), [target]))
            write_jsonl(out / f"{task}-{split}.jsonl", records)
    return out


@pytest.fixture()
def kilt_tasks() -> dict:
    """The `data.tasks` mapping of the kilt_dir fixture."""
    return {
        "qa": {"train": "qa-train.jsonl", "dev": "qa-dev.jsonl", "prompt": "QA", "max_query_length": 8},
        "el": {"train": "el-train.jsonl", "dev": "el-dev.jsonl", "prompt": "EL", "max_query_length": 8},
    }
