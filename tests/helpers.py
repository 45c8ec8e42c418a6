"""Helpers shared by the test files (fixtures live in conftest.py): no test file imports another.

``tiny_config`` composes the real root config for the tiny models; ``sweep`` expands a
multirun's sweep as Hydra's basic sweeper does; the raw-KILT writers stand in for KILT's files.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from multiret.data.jsonl import write_jsonl
from multiret.experiment.run import CONFIG_DIR
from multiret.prepare.kilt_tasks import KILT_TASKS

WORDS = [f"w{i}" for i in range(120)]  # the words the session's tiny T5 and BERT tokenizers know
METHODS = sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml"))  # every conf/method option
# MULTIRET_TEST_TRAINER=gpu runs the tiny trainings on a GPU (bf16) when one is there; CI uses the CPU.
TRAINER = os.environ.get("MULTIRET_TEST_TRAINER", "cpu")
TINY_TASKS = {  # the `data.tasks` mapping of the kilt_dir fixture, for module-scoped fixtures (the kilt_tasks fixture is per test)
    "qa": {"train": "qa-train.jsonl", "dev": "qa-dev.jsonl", "prompt": "QA", "max_query_length": 8},
    "el": {"train": "el-train.jsonl", "dev": "el-dev.jsonl", "prompt": "EL", "max_query_length": 8},
}


def sweep(key: str, *overrides: str) -> list[str]:
    """The values a `-m` run of this config gives ``key``, expanded as Hydra's basic sweeper does (``glob(...)`` too)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        params = compose("train", overrides=list(overrides), return_hydra_config=True).hydra.sweeper.params
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        (override,) = parser.parse_overrides([f"{key}={params[key]}"])
        return list(override.sweep_string_iterator())


def tiny_config(out: Path, model_dir: Path, kilt_dir: Path, tasks: dict, *overrides: str,
                config_name: str = "train", model: str = "t5_prompted") -> DictConfig:
    """The real root config (``train`` or ``episodes``) shrunk to a tiny model (``model``: the tiny T5's config, or
    ``minilm`` for the tiny BERT) and the tiny KILT fixture, with ``overrides``."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name,
            overrides=[
                f"model={model}", f"model.encoder.path={model_dir}", "logger=csv", f"paths.output_dir={out}",
                "data=kilt_files", f"data.root={kilt_dir}", "data.corpus=corpus.tsv", "data.task_names=[qa,el]",
                "data.batch_size=8", "data.max_passage_length=16", "data.bm25_top_k=5", "optimizer.lr=3e-3",
                f"trainer={TRAINER}", "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2", "index.batch_size=16",
                *overrides,
            ],
        )
    cfg.data.tasks = tasks
    return cfg


def assert_same(a, b):
    """Bitwise equality of nested checkpoint state (tensors, lists, dicts, numbers)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


PAGES = range(10, 20)  # wikipedia ids of the fixture's passage corpus; page 999 is cited but absent
MISSING_PAGE = 999


def page_words(page: int) -> list[str]:
    """The 15 words of a raw KILT page (seeded by its id), from WORDS."""
    return random.Random(page).sample(WORDS, 15)


def passage_tsv(path: Path) -> Path:
    """KILT's passage TSV layout: three passages per page of PAGES (titles with an accent)."""
    rows = ["id\ttext\ttitle\twikipedia_id"]
    for page in PAGES:
        words = page_words(page)
        for j in range(3):
            rows.append(f"{page}_{j}\t{' '.join(words[5 * j:5 * j + 5])}\tPagé {page}\t{page}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def kilt_item(qid: str, text: str | None, pages: list[int]) -> dict:
    """One KILT record citing ``pages`` (no provenance when empty; no input when ``text`` is None, as TriviaQA)."""
    record = {"id": qid, "output": [{"answer": "x", "provenance": [
        {"wikipedia_id": str(p), "title": f"Page {p}", "start_paragraph_id": 2, "end_paragraph_id": 2, "section": "S"}
        for p in pages]}]}
    if not pages:
        record["output"] = [{"answer": "x"}]
    if text is not None:
        record["input"] = text
    return record


def page_query(page: int, n: int = 3) -> str:
    """A query of the first ``n`` words of a page."""
    return " ".join(page_words(page)[:n])


def kilt_files(kilt: Path) -> dict:
    """Every task's train/dev files with realistic input shapes, and a TriviaQA question file."""
    kilt.mkdir(parents=True, exist_ok=True)
    left, right = " ".join(f"L{i}" for i in range(100)), " ".join(f"R{i}" for i in range(100))
    aida_doc = f"{left} [START_ENT] {page_query(15, 2)} [END_ENT] {right}"
    train = {
        "nq": [kilt_item("nq0", page_query(10), [10]), kilt_item("nq1", page_query(11), [11, 12]),
               kilt_item("nq2", "who cites a page we lack", [MISSING_PAGE]), kilt_item("nq3", "no provenance here", []),
               kilt_item("nq4", page_query(13), [13, MISSING_PAGE])],
        "triviaqa": [kilt_item("tqa0", None, [14]), kilt_item("tqa1", None, [15]), kilt_item("tqa-unknown", None, [16])],
        "hotpotqa": [kilt_item("hp0", page_query(16) + " and " + page_query(17), [16, 17])],
        "wow": [kilt_item("wow0", f"{page_query(18)}\nI love it\n{page_query(18, 5)}", [18])],
        "trex": [kilt_item(f"trex{i}", f"{page_words(10 + i)[0]} [SEP] w{i}", [10 + i]) for i in range(6)],
        "fever": [kilt_item("fever0", f"{page_query(19)} is a claim .", [19])],
        "structured_zeroshot": [kilt_item(f"zsre{i}", f"{page_words(12 + i)[1]} [SEP] w{i}", [12 + i]) for i in range(6)],
        "aidayago2": [kilt_item("aida0", aida_doc, [15])],
    }
    for task, records in train.items():
        dev = [dict(r, id=f"{r['id']}-dev") for r in records[:2]]
        write_jsonl(kilt / KILT_TASKS[task].kilt_file("train"), records)
        write_jsonl(kilt / KILT_TASKS[task].kilt_file("dev"), dev)
    questions = kilt / "triviaqa-questions.json"
    data = [{"QuestionId": q, "Question": page_query(p), "Answer": {}} for q, p in
            (("tqa0", 14), ("tqa1", 15), ("tqa0-dev", 14), ("tqa1-dev", 15))]
    questions.write_text(json.dumps({"Data": data, "Version": 1.0}), encoding="utf-8")
    return {"questions": questions, "aida_doc": aida_doc}


def prepared_config(run_dir, model_dir, out, report, task_names, *overrides):
    """``tiny_config`` over a folder of ``prepare kilt`` or ``prepare dpr``: its report's tasks, passage store and
    negatives, two steps."""
    tasks = {name: {"train": s["train"], "dev": s["dev"], "prompt": name, "max_query_length": 16}
             for name, s in report["settings"]["tasks"].items()}
    return tiny_config(run_dir, model_dir, out, tasks, "data.corpus=passages", "trainer.max_steps=2",
                       f"data.task_names=[{','.join(task_names)}]", f"data.negatives_dir={out / 'negatives'}", *overrides)
