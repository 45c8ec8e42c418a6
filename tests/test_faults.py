"""Fault injection through the real command line: every user error is one line naming what to fix.

Each row of ``FAULTS`` is a class of fault from issue 13 (bad JSON, bad UTF-8, a missing
column, duplicate ids, a bad setting, a missing path, a broken checkpoint, an unwritable
folder, an input that cannot be scored), a command that meets it, and the words its one
line must hold. A new class is one more row: ``argv`` builds the command from a copy of the
tiny KILT fixture (``ws``) and a scratch folder (``tmp``). Cases that need a model or a
patched setting are tests of their own below (a field over the csv limit by an unclosed quote or by its
own length, non-finite steps, an unwritable ``MULTIRET_LOGS``, a killed prepare's or checkpoint save's temporaries,
an empty train file, resuming with another method or task list, a full disk while checkpointing, Lightning's
``weights_only`` default left unset).
Two classes are behaviour, not messages, and are tested where they live: same-second runs
get their own folders (tests/test_run_folders.py), and a kill while ``last.ckpt`` is replaced
leaves it intact (tests/test_checkpoint_safety.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import multiret.experiment.run  # noqa: F401  (imported here, so that its import-time warnings stay out of the captured stderr)
from multiret.atomic import atomic_write_text
from multiret.cli import main as cli
from multiret.errors import UserError

TASKS = ("data.tasks={qa: {train: qa-train.jsonl, dev: qa-dev.jsonl, prompt: QA, max_query_length: 8}, "
         "el: {train: el-train.jsonl, dev: el-dev.jsonl, prompt: EL, max_query_length: 8}}")


def evaluate(ws: Path, tmp: Path, *overrides: str) -> list[str]:
    """`multiret evaluate` with the BM25 retriever on the fixture: no model is built, data errors surface at once."""
    return ["evaluate", f"hydra.run.dir={tmp / 'run'}", "logger=csv", "data=kilt_files", f"data.root={ws}",
            "data.corpus=corpus.tsv", "data.task_names=[qa,el]", TASKS, "retriever=bm25", "stages=[evaluate]", *overrides]


def train(ws: Path, tmp: Path, *overrides: str) -> list[str]:
    """`multiret train` on the fixture; the cases below fail in validation, before the model is built."""
    return ["train", f"hydra.run.dir={tmp / 'run'}", "logger=csv", "data=kilt_files", f"data.root={ws}",
            "data.corpus=corpus.tsv", "data.task_names=[qa,el]", TASKS, *overrides]


def kilt_eval(ws: Path, gold: str = "qa-dev.jsonl", guess: str = "guess.jsonl") -> list[str]:
    """`multiret kilt-eval` of ``guess`` against ``gold``, both in ``ws``; ``guess.jsonl`` guesses every dev item right."""
    if not (ws / "guess.jsonl").exists():
        guesses = [{"id": r["id"], "output": [{"provenance": r["output"][0]["provenance"]}]}
                   for r in map(json.loads, (ws / "qa-dev.jsonl").read_text().splitlines())]
        (ws / "guess.jsonl").write_text("".join(json.dumps(g) + "\n" for g in guesses))
    return ["kilt-eval", "--gold", str(ws / gold), "--guess", str(ws / guess)]


def prepare(ws: Path, tmp: Path, out: Path | None = None) -> list[str]:
    """`multiret prepare kilt` of one task (the fixture's `el` files as KILT's nq) over the fixture's passages."""
    kilt = tmp / "kilt"
    kilt.mkdir(exist_ok=True)
    for split in ("train", "dev"):
        shutil.copy(ws / f"el-{split}.jsonl", kilt / f"nq-{split}-kilt.jsonl")
    return ["prepare", "kilt", "--kilt-dir", str(kilt), "--passages", str(ws / "corpus.tsv"),
            "--out", str(out or tmp / "prepared"), "--tasks", "nq", "--no-progress"]


def edit_line(path: Path, number: int, text: str | bytes) -> None:
    """Replace line ``number`` (1-based) of ``path`` with ``text``."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1] = (text.encode() if isinstance(text, str) else text) + b"\n"
    path.write_bytes(b"".join(lines))


def duplicate_line(path: Path, number: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines, lines[number - 1]]))


@dataclass(frozen=True)
class Fault:
    fault: str  # the class of fault (issue 13's table)
    argv: Callable[[Path, Path], list[str]]  # (ws, tmp) -> command line; may break files in ws first
    names: tuple[str, ...]  # what the one line must name (file:line, key=value, the fix); "{ws}"/"{tmp}" are filled in
    after: Callable[[Path, Path], bool] = lambda ws, tmp: True  # what must hold afterwards (nothing marked done, ...)


def _bad_json(ws: Path, tmp: Path) -> list[str]:
    edit_line(ws / "qa-dev.jsonl", 2, '{"id": "qa-x", "input": "never closed')
    return evaluate(ws, tmp)


def _bad_json_guess(ws: Path, tmp: Path) -> list[str]:
    argv = kilt_eval(ws)
    edit_line(ws / "guess.jsonl", 3, "{not json")
    return argv


def _bad_utf8(ws: Path, tmp: Path) -> list[str]:
    edit_line(ws / "el-dev.jsonl", 3, b'{"id": "el-x", "input": "caf\xe9"}')
    return evaluate(ws, tmp)


def _bad_utf8_gold(ws: Path, tmp: Path) -> list[str]:
    argv = kilt_eval(ws)
    edit_line(ws / "qa-dev.jsonl", 4, b'{"id": "\xff\xfe"}')
    return argv


def _missing_corpus_column(ws: Path, tmp: Path) -> list[str]:
    edit_line(ws / "corpus.tsv", 1, "id\ttext\ttitle\tpage")
    return evaluate(ws, tmp)


def _missing_input(ws: Path, tmp: Path) -> list[str]:
    edit_line(ws / "qa-dev.jsonl", 5, '{"id": "qa-x", "output": []}')
    return evaluate(ws, tmp)


def _duplicate_query_id(ws: Path, tmp: Path) -> list[str]:
    duplicate_line(ws / "qa-dev.jsonl", 1)
    return evaluate(ws, tmp)


def _duplicate_guess_id(ws: Path, tmp: Path) -> list[str]:
    argv = kilt_eval(ws)
    duplicate_line(ws / "guess.jsonl", 2)
    return argv


def _empty_dev_file(ws: Path, tmp: Path) -> list[str]:
    (ws / "el-dev.jsonl").write_text("\n\n")
    return evaluate(ws, tmp)


def _empty_gold(ws: Path, tmp: Path) -> list[str]:
    argv = kilt_eval(ws)
    (ws / "qa-dev.jsonl").write_text("")
    return argv


def _blank_guess(ws: Path, tmp: Path) -> list[str]:
    argv = kilt_eval(ws)
    (ws / "guess.jsonl").write_text(" \n\n")
    return argv


def _both_empty(ws: Path, tmp: Path) -> list[str]:
    argv = kilt_eval(ws)
    (ws / "qa-dev.jsonl").write_text("")
    (ws / "guess.jsonl").write_text("")
    return argv


def _gold_without_provenance(ws: Path, tmp: Path) -> list[str]:
    argv = kilt_eval(ws)
    records = [json.loads(line) for line in (ws / "qa-dev.jsonl").read_text().splitlines()]
    answers_only = [{**r, "output": [{"answer": o["answer"]} for o in r["output"]]} for r in records]
    (ws / "qa-dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in answers_only))
    return argv


def _empty_checkpoint(ws: Path, tmp: Path) -> list[str]:
    (tmp / "last.ckpt").write_bytes(b"")
    return train(ws, tmp, "stages=[index,evaluate]", f"ckpt_path={tmp / 'last.ckpt'}")


def _truncated_checkpoint(ws: Path, tmp: Path) -> list[str]:
    import torch

    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp / "full.ckpt")
    (tmp / "last.ckpt").write_bytes((tmp / "full.ckpt").read_bytes()[:-200])
    return train(ws, tmp, f"ckpt_path={tmp / 'last.ckpt'}")


def _folder_under_a_file(ws: Path, tmp: Path) -> list[str]:
    return train(ws, tmp, "stages=[index,evaluate]", f"index.dir={ws / 'corpus.tsv' / 'index'}")


def _bad_utf8_passage(ws: Path, tmp: Path) -> list[str]:
    edit_line(ws / "corpus.tsv", 3, b"0_1\tcaf\xe9 w1\tPage 0\t0")
    return prepare(ws, tmp)


class _Payload:
    """What a crafted checkpoint pickles: unpickling it would open (create) ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _crafted_checkpoint(ws: Path, tmp: Path) -> list[str]:
    import torch

    torch.save({"state_dict": {}, "payload": _Payload(tmp / "code-ran")}, tmp / "crafted.ckpt")
    return train(ws, tmp, "stages=[index,evaluate]", f"ckpt_path={tmp / 'crafted.ckpt'}")


class _Command:
    """What a crafted checkpoint pickles: unpickling it would run a shell command (``os.system``, a blocked module's)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted_checkpoint_of_a_blocked_module(ws: Path, tmp: Path) -> list[str]:
    import torch

    torch.save({"state_dict": {}, "payload": _Command(tmp / "code-ran")}, tmp / "crafted.ckpt")
    return train(ws, tmp, "stages=[index,evaluate]", f"ckpt_path={tmp / 'crafted.ckpt'}")


def _no_code_ran(ws: Path, tmp: Path) -> bool:
    return not (tmp / "code-ran").exists()


def _duplicate_passage_id(ws: Path, tmp: Path) -> list[str]:
    duplicate_line(ws / "corpus.tsv", 4)  # the corpus's line 4 again, as its last line
    return evaluate(ws, tmp)


def _bad_utf8_corpus(ws: Path, tmp: Path) -> list[str]:
    edit_line(ws / "corpus.tsv", 5, b"9_9\tna\xefve text\tPage 9\t9")
    return evaluate(ws, tmp)


def _truncated_metrics(run: Path) -> None:
    """A run folder whose ``eval/metrics.json`` was cut short (a kill while it was copied, a full disk)."""
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("group: g\n")
    (run / "eval" / "metrics.json").write_text('{"qa": {"Rprec": 0.5')


def _truncated_metrics_compare(ws: Path, tmp: Path) -> list[str]:
    _truncated_metrics(tmp / "runs" / "one")
    return ["compare", str(tmp / "runs"), "--out", str(tmp / "comparison")]


def _truncated_metrics_study(ws: Path, tmp: Path) -> list[str]:
    _truncated_metrics(tmp / "study" / "final" / "taco" / "0")
    return ["study", "report", str(tmp / "study"), "--out", str(tmp / "page.md")]


def _passages_not_marked_done(ws: Path, tmp: Path) -> bool:
    return not (tmp / "prepared" / ".done" / "passages.json").exists()


FAULTS = {
    "bad JSON: a dev file": Fault("bad JSON", _bad_json, ("{ws}/qa-dev.jsonl:2", "invalid JSON", "column")),
    "bad JSON: a guess file": Fault("bad JSON", _bad_json_guess, ("{ws}/guess.jsonl:3", "invalid JSON")),
    "bad UTF-8: a dev file": Fault("bad UTF-8", _bad_utf8, ("{ws}/el-dev.jsonl:3", "not UTF-8", "0xe9")),
    "bad UTF-8: a gold file": Fault("bad UTF-8", _bad_utf8_gold, ("{ws}/qa-dev.jsonl:4", "not UTF-8")),
    "bad UTF-8: passage text": Fault("bad UTF-8", _bad_utf8_passage, ("{ws}/corpus.tsv:3", "not UTF-8", "0xe9"),
                                     after=_passages_not_marked_done),
    "bad UTF-8: a corpus file": Fault("bad UTF-8", _bad_utf8_corpus, ("{ws}/corpus.tsv:5", "UTF-8")),
    "duplicate ids: corpus": Fault("duplicate ids", _duplicate_passage_id, ("{ws}/corpus.tsv", "duplicate passage id", "line 4")),
    "crafted checkpoint: code in its pickle": Fault("crafted checkpoint", _crafted_checkpoint,
                                                    ("ckpt_path='{tmp}/crafted.ckpt'", "refused as unsafe", "weights_only=True",
                                                     "Unsupported global: GLOBAL", "could run code"),
                                                    after=_no_code_ran),
    "crafted checkpoint: a call into os": Fault("crafted checkpoint", _crafted_checkpoint_of_a_blocked_module,
                                                ("ckpt_path='{tmp}/crafted.ckpt'", "refused as unsafe", "weights_only=True",
                                                 "posix.system", "could run code"), after=_no_code_ran),
    "truncated JSON: compare's metrics.json": Fault("truncated JSON", _truncated_metrics_compare,
                                                   ("{tmp}/runs/one/eval/metrics.json:1", "invalid JSON", "truncated")),
    "truncated JSON: study report's metrics.json": Fault("truncated JSON", _truncated_metrics_study,
                                                         ("{tmp}/study/final/taco/0/eval/metrics.json:1", "truncated")),
    "bad config value: negative learning rate": Fault("bad config value", lambda ws, tmp: train(ws, tmp, "optimizer.lr=-0.001"),
                                                      ("optimizer.lr=-0.001", "positive number")),
    "bad config value: negative n_negatives": Fault("bad config value", lambda ws, tmp: train(ws, tmp, "data.n_negatives=-1"),
                                                    ("data.n_negatives=-1", "0 or more")),
    "best checkpoint chosen on the test split": Fault("bad config value", lambda ws, tmp: train(ws, tmp, "data.eval_split=test"),
                                                       ("data.eval_split=test", "eval_checkpoint=last")),
    "missing column: corpus": Fault("missing column", _missing_corpus_column, ("{ws}/corpus.tsv:1", "wikipedia_id")),
    "missing column: input": Fault("missing column", _missing_input, ("{ws}/qa-dev.jsonl:5", "'input'")),
    "duplicate ids: queries": Fault("duplicate ids", _duplicate_query_id, ("{ws}/qa-dev.jsonl:21", "duplicate id 'qa-dev-0'")),
    "duplicate ids: guesses": Fault("duplicate ids", _duplicate_guess_id, ("{ws}/guess.jsonl", "duplicate id 'qa-dev-2'")),
    "bad config value: top_k=0": Fault("bad config value", lambda ws, tmp: evaluate(ws, tmp, "index.top_k=0"),
                                       ("index.top_k=0", "positive integer")),
    "bad config value: k > top_k": Fault("bad config value", lambda ws, tmp: evaluate(ws, tmp, "index.ks=[1,5,500]"),
                                         ("index.ks=[1, 5, 500]", "index.top_k=100", "index.top_k=500")),
    "bad config value: ks empty": Fault("bad config value", lambda ws, tmp: evaluate(ws, tmp, "index.ks=[]"),
                                        ("index.ks=[]",)),
    "bad config value: retriever": Fault("bad config value", lambda ws, tmp: evaluate(ws, tmp, "retriever=sparse"),
                                         ("retriever='sparse'", "dense", "bm25")),
    "bad config value: task name": Fault("bad config value", lambda ws, tmp: evaluate(ws, tmp, "data.task_names=[qa,nope]"),
                                         ("unknown task(s) 'nope' in data.task_names", "known tasks: el, qa")),
    "missing path: data root": Fault("missing path", lambda ws, tmp: evaluate(ws / "nowhere", tmp),
                                     ("data file(s) not found: {ws}/nowhere/corpus.tsv, {ws}/nowhere/qa-train.jsonl", "data.root")),
    "missing path: ckpt_path": Fault("missing path", lambda ws, tmp: train(ws, tmp, f"ckpt_path={tmp / 'none.ckpt'}"),
                                     ("ckpt_path='{tmp}/none.ckpt'", "does not exist")),
    "missing path: kilt-eval gold": Fault("missing path", lambda ws, tmp: kilt_eval(ws, gold="none.jsonl"),
                                          ("{ws}/none.jsonl", "no such file")),
    "empty input: dev file": Fault("empty input", _empty_dev_file, ("{ws}/el-dev.jsonl", "empty or blank")),
    "empty input: gold file": Fault("empty input", _empty_gold, ("gold file {ws}/qa-dev.jsonl", "empty or blank")),
    "empty input: guess file": Fault("empty input", _blank_guess, ("guess file {ws}/guess.jsonl", "empty or blank")),
    "empty input: both kilt-eval files": Fault("empty input", _both_empty, ("gold file {ws}/qa-dev.jsonl", "empty or blank")),
    "empty input: gold without provenance": Fault("empty input", _gold_without_provenance,
                                                  ("gold file {ws}/qa-dev.jsonl", "no record has provenance", "swapped")),
    "broken checkpoint: empty": Fault("crafted checkpoint", _empty_checkpoint,
                                      ("ckpt_path='{tmp}/last.ckpt'", "0 bytes", "truncated")),
    "broken checkpoint: truncated": Fault("crafted checkpoint", _truncated_checkpoint,
                                          ("ckpt_path='{tmp}/last.ckpt'", "truncated")),
    "read-only folder: a file in the way": Fault("read-only folder", _folder_under_a_file,
                                                 ("index.dir", "{ws}/corpus.tsv/index", "writable")),
    "read-only folder: prepare --out": Fault("read-only folder", lambda ws, tmp: prepare(ws, tmp, ws / "corpus.tsv" / "out"),
                                             ("--out", "{ws}/corpus.tsv/out", "writable")),
}


@pytest.fixture()
def ws(tmp_path: Path, kilt_dir: Path) -> Path:
    """A private copy of the tiny KILT fixture that a case may break."""
    return Path(shutil.copytree(kilt_dir, tmp_path / "ws"))


@pytest.mark.parametrize("case", FAULTS)
def test_fault_is_one_line_naming_the_fix(case: str, ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    fault = FAULTS[case]
    monkeypatch.setattr(sys, "argv", ["multiret"])  # the Hydra commands set sys.argv; restored afterwards
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv = fault.argv(ws, tmp_path)
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"multiret {argv[0]}: error: "), err
    for name in fault.names:
        assert name.format(ws=ws, tmp=tmp_path) in lines[0]
    assert "at at " not in lines[0]
    assert fault.after(ws, tmp_path)


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"multiret {command}: error: "), lines
    return lines[0]


def _evaluate_under_a_field_limit_of_200(ws: Path, tmp_path: Path, monkeypatch, capsys) -> str:
    """`multiret evaluate` with the csv field limit lowered to 200 characters; its one error line."""
    import csv

    from multiret.data import passage_files

    monkeypatch.setattr(passage_files, "FIELD_LIMIT", 200)
    monkeypatch.setattr(sys, "argv", ["multiret"])
    old = csv.field_size_limit(200)
    try:
        assert cli(evaluate(ws, tmp_path)) == 2
    finally:
        csv.field_size_limit(old)
    return _one_error_line(capsys, "evaluate")


def test_a_field_over_the_csv_limit_is_one_line(ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """An unclosed quote swallows the rest of the file into one field; the line names where it opened."""
    edit_line(ws / "corpus.tsv", 3, '0_1\t"opened and never closed\tPage 0\t0')
    line = _evaluate_under_a_field_limit_of_200(ws, tmp_path, monkeypatch, capsys)
    assert f"{ws}/corpus.tsv:3" in line and "csv size limit" in line


def test_a_long_field_on_one_line_is_not_blamed_on_a_quote(ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A 30 MB passage (here: over a lowered limit) with no quote at all: the line says the field is too long."""
    edit_line(ws / "corpus.tsv", 3, "0_1\t" + "w1 " * 100 + "\tPage 0\t0")
    line = _evaluate_under_a_field_limit_of_200(ws, tmp_path, monkeypatch, capsys)
    assert f"{ws}/corpus.tsv:3" in line and "split the passage" in line and "quote" not in line


def test_an_unwritable_log_folder_is_one_line(ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """MULTIRET_LOGS under a file: Hydra resolves the run folder before any task code runs."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MULTIRET_LOGS", str(tmp_path / "a-file" / "logs"))
    monkeypatch.setattr(sys, "argv", ["multiret"])
    argv = [a for a in evaluate(ws, tmp_path) if not a.startswith("hydra.run.dir=")]
    assert cli(argv) == 2
    line = _one_error_line(capsys, "evaluate")
    assert f"{tmp_path}/a-file/logs" in line and "MULTIRET_LOGS" in line


def test_a_killed_prepare_leaves_no_temporary_file_after_the_next_run(ws: Path, tmp_path: Path, monkeypatch) -> None:
    """The atomic writer's temporaries (``.<name>.<random>.tmp<suffix>``) of a killed run are removed by the next."""
    from multiret.atomic import temporary_beside

    out = tmp_path / "prepared"
    left = [temporary_beside(out / "nq-train.jsonl"), temporary_beside(out / "negatives" / "nq-train.jsonl")]
    monkeypatch.setattr(sys, "argv", ["multiret"])
    assert cli(prepare(ws, tmp_path)) == 0
    assert not any(path.exists() for path in left)
    assert not list(out.rglob(".*.tmp*"))


def test_an_empty_train_file_names_it(ws: Path, tmp_path: Path, tiny_t5_dir: Path, monkeypatch, capsys) -> None:
    (ws / "el-train.jsonl").write_text("")
    monkeypatch.setattr(sys, "argv", ["multiret"])
    argv = train(ws, tmp_path, "model=t5_prompted", f"model.encoder.path={tiny_t5_dir}", "stages=[train]")
    assert cli(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("multiret train: error: ") and f"{ws}/el-train.jsonl" in line and "holds no item" in line


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, kilt_dir: Path, tiny_t5_dir: Path) -> tuple[Path, Path, list[str]]:
    """A 2-step naive training on the fixture, into a run folder where a killed save had left its temporary file.

    Returns the data folder, the run folder and what Lightning's checkpoint connector logged.
    """
    from lightning.pytorch.trainer.connectors import checkpoint_connector

    ws = Path(shutil.copytree(kilt_dir, tmp_path_factory.mktemp("trained") / "ws"))
    run = ws.parent / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.ckpt.k1lled.tmp.ckpt").write_bytes(b"")
    records, logger = _Records(), checkpoint_connector.log
    handlers, level, old_level = logging.root.handlers[:], logging.root.level, logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["multiret"])
            assert cli(train(ws, ws.parent, "model=t5_prompted", f"model.encoder.path={tiny_t5_dir}", "method=naive",
                             "trainer.max_steps=2", "stages=[train]", "data.batch_size=4", "data.max_passage_length=16")) == 0
    finally:
        logger.removeHandler(records)
        logger.setLevel(old_level)
        logging.root.handlers[:], logging.root.level = handlers, level
    return ws, run, records.messages


def test_a_killed_checkpoint_save_leaves_no_temporary_file_after_the_next_run(trained) -> None:
    ws, run, _ = trained
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not list((run / "checkpoints").glob(".*.tmp*"))


def test_training_logs_no_weights_only_default(trained) -> None:
    """Every checkpoint is saved whole and loaded with weights_only=True: nothing is left to Lightning's default."""
    assert not any("weights_only" in message for message in trained[2])


@pytest.mark.parametrize("change,names", [
    (("method=taco",), ("trained with method='naive', not method='taco'", "resume with method=naive")),
    (("method=naive", "data.task_names=[el,qa]"), ("trained on tasks ['qa', 'el'], but data.task_names is ['el', 'qa']",
                                                   "same task list in the same order")),
    (("method=naive", "data.task_names=[qa]"), ("trained on tasks ['qa', 'el'], but data.task_names is ['qa']",)),
])
def test_resuming_another_method_or_task_list_is_one_line(trained, change, names, tmp_path: Path, tiny_t5_dir: Path,
                                                         monkeypatch, capsys) -> None:
    ws, run, _ = trained
    monkeypatch.setattr(sys, "argv", ["multiret"])
    capsys.readouterr()
    argv = train(ws, tmp_path, "model=t5_prompted", f"model.encoder.path={tiny_t5_dir}", "stages=[train]", "data.batch_size=4",
                 "data.max_passage_length=16", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *change)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("multiret train: error: cannot resume from checkpoint ") and "Traceback" not in err, err
    assert str(run / "checkpoints" / "last.ckpt") in line and "fresh run folder (resume=false, no ckpt_path)" in line
    for name in names:
        assert name in line


def test_a_full_disk_while_checkpointing_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """torch's zip writer raises its own error from the file's ENOSPC; the line says what it was, and the old file stays."""
    import errno

    import torch

    from multiret.experiment.checkpoint import SafeCheckpointIO

    def full_disk(obj: object, handle) -> None:
        handle.write(b"PK\x03\x04")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0") from error

    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"the previous checkpoint")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError) as error:
        SafeCheckpointIO().save_checkpoint({"state_dict": {}}, last)
    message = str(error.value)
    assert "\n" not in message and f"checkpoint {last}: no space left on device" in message
    assert last.read_bytes() == b"the previous checkpoint" and list(last.parent.iterdir()) == [last]


def test_non_finite_steps_stop_training_with_one_line_and_finite_weights(ws: Path, tmp_path: Path, tiny_t5_dir: Path,
                                                                       monkeypatch, capsys) -> None:
    """Task `el`'s loss is NaN from step 1 on: those updates are skipped, and K in a row stop the run (exit 2, one line)."""
    import torch

    from multiret.model.biencoder import BiEncoder

    clean = BiEncoder.task_loss

    def poisoned(self, batch):
        loss = clean(self, batch)
        return loss * float("nan") if batch.task == "el" and self.trainer.global_step >= 1 else loss

    monkeypatch.setattr(BiEncoder, "task_loss", poisoned)
    monkeypatch.setattr(sys, "argv", ["multiret"])
    argv = train(ws, tmp_path, "model=t5_prompted", f"model.encoder.path={tiny_t5_dir}", "method=naive",
                 "method.max_nonfinite_steps=2", "trainer.max_steps=4", "stages=[train]", "data.batch_size=4",
                 "data.max_passage_length=16", "callbacks.model_checkpoint.every_n_train_steps=1")
    assert cli(argv) == 2
    err = capsys.readouterr().err  # training wrote its progress bars there first; the error is its one last line
    line = err.strip().splitlines()[-1]
    assert line.startswith("multiret train: error: ") and "Traceback" not in err and err.count("error:") == 1
    assert "2 steps in a row had a non-finite loss of task(s) ['el']" in line and "method.max_nonfinite_steps" in line
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert checkpoints  # written after the finite first step and the skipped ones
    for checkpoint in checkpoints:
        state = torch.load(checkpoint, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_read_only_run_folder_fails_before_the_work(ws: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    monkeypatch.setattr(sys, "argv", ["multiret"])
    assert cli(train(ws, tmp_path, f"paths.output_dir={locked / 'run'}")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "paths.output_dir" in err and "Permission denied" in err


def test_full_error_shows_the_traceback(ws: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["multiret"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UserError, match=r"index\.top_k=0"):
        cli(evaluate(ws, tmp_path, "index.top_k=0"))


def test_a_bug_keeps_its_traceback(ws: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(cfg):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(sys, "argv", ["multiret"])
    monkeypatch.setattr("multiret.experiment.run.validate", broken)
    with pytest.raises(SystemExit) as exit_info:  # Hydra prints the traceback and exits 1
        cli(evaluate(ws, tmp_path))
    assert exit_info.value.code == 1


def test_the_process_exits_2_with_one_line(ws: Path) -> None:
    """The installed entry point, in a process of its own: status 2, stderr one line, nothing on stdout."""
    argv = kilt_eval(ws)
    (ws / "guess.jsonl").write_text("")
    done = subprocess.run([sys.executable, "-m", "multiret.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"multiret kilt-eval: error: guess file {ws}/guess.jsonl: no record "
                                        "(the file is empty or blank); nothing to score"]


def test_a_cleanup_error_does_not_hide_the_error(tmp_path: Path, monkeypatch) -> None:
    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(os, "replace", full_disk)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(OSError, match="No space left on device") as error:
        atomic_write_text(tmp_path / "out.json", "{}")
    assert "could not be removed either" in " ".join(error.value.__notes__)
