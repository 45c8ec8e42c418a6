"""Shared fixtures: a tiny random T5 and BERT with tokenizers trained in the session, and a tiny KILT-format dataset."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from multiret.atomic import atomic_write_text
from multiret.data.jsonl import write_jsonl
from multiret.testing import build_tiny_bert, build_tiny_t5

from helpers import WORDS

NUM_PAGES = 40


@pytest.fixture(autouse=True)
def own_logging():
    """Hydra points the root logger at the captured stdout of the test that ran it, closed afterwards; every test
    leaves the root logger as it found it, so no later test logs into a closed stream."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def _page_words(page: int) -> list[str]:
    rng = random.Random(page)
    return rng.sample(WORDS, 12)


def _texts() -> list[str]:
    return [" ".join(_page_words(p)) for p in range(NUM_PAGES)] + ["QA EL qa el Title Text"]


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random T5 whose tokenizer (trained here on the fixture's words) has pad=0, eos=1 and sentinels."""
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"), _texts())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT with a word-level tokenizer (trained here) that adds [CLS] ... [SEP]."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), _texts())


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
        for split, pages in (("train", range(NUM_PAGES)), ("dev", range(0, NUM_PAGES, 2))):
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
