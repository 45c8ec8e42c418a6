"""`multiret kilt-eval` as a user runs it: stdin, pipes, swapped arguments, what it promises in --help."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multiret.data.corpus import Corpus
from multiret.data.jsonl import write_jsonl
from multiret.data.tasks import TaskSpec
from multiret.eval.kilt_eval_cli import build_parser, main
from multiret.eval.kilt_metrics import guess_record
from multiret.eval.retrieval import COVERAGE, evaluate_task_rankings

REPO = Path(__file__).resolve().parents[1]


def gold(item_id: str, pages: list[str]) -> dict:
    return {"id": item_id, "input": f"question {item_id}",
            "output": [{"answer": "x", "provenance": [{"wikipedia_id": p} for p in pages]}]}


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """q1's gold page is guessed first, q2's second: Rprec 1/2."""
    gold_path, guess_path = tmp_path / "gold.jsonl", tmp_path / "guess.jsonl"
    write_jsonl(gold_path, [gold("q1", ["A"]), gold("q2", ["B"])])
    write_jsonl(guess_path, [guess_record("q1", ["A", "B"]), guess_record("q2", ["A", "B"])])
    return gold_path, guess_path


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The command in a process of its own, under bash so that ``<(...)`` works."""
    command = " ".join([sys.executable, "-m", "multiret.cli", "kilt-eval", *args])
    return subprocess.run(["bash", "-c", command], input=stdin, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for process substitution")
def test_reads_stdin_and_pipes(pair: tuple[Path, Path]) -> None:
    gold_path, guess_path = pair
    from_files = cli("--gold", str(gold_path), "--guess", str(guess_path), "--json")
    assert from_files.returncode == 0, from_files.stderr
    expected = json.loads(from_files.stdout)
    assert expected["Rprec"] == pytest.approx(0.5)
    piped = cli("--gold", f"<(cat {gold_path})", "--guess", f"<(cat {guess_path})", "--json")
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout) == expected
    stdin = cli("--gold", str(gold_path), "--guess", "-", "--json", stdin=guess_path.read_text())
    assert stdin.returncode == 0, stdin.stderr
    assert json.loads(stdin.stdout) == expected


def test_stdin_errors_name_stdin_and_line(pair: tuple[Path, Path], monkeypatch, capsys) -> None:
    gold_path, _ = pair
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"id": "q1"}\n{oops\n')))
    assert main(["--gold", str(gold_path), "--guess", "-"]) == 2
    assert "<stdin>:2: invalid JSON" in capsys.readouterr().err


def test_both_on_stdin_is_refused(capsys) -> None:
    assert main(["--gold", "-", "--guess", "-"]) == 2
    assert "cannot both be '-'" in capsys.readouterr().err


def test_swapped_arguments_are_warned_about(pair: tuple[Path, Path], capsys) -> None:
    gold_path, guess_path = pair
    guesses_as_gold = guess_path.with_name("guess-as-gold.jsonl")
    write_jsonl(guesses_as_gold, [{**guess_record("q1", ["A"]), "output": [{"provenance": [{"wikipedia_id": "A"}]}]},
                                  guess_record("q2", ["B"])])
    # The gold file in --guess carries a single output per item, so it can be scored, but it reads like gold.
    assert main(["--gold", str(guesses_as_gold), "--guess", str(gold_path), "--json"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("multiret kilt-eval: warning: ") and "swapped" in err and str(gold_path) in err
    assert main(["--gold", str(gold_path), "--guess", str(guess_path), "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_a_gold_record_as_a_guess_hints_at_swapped_arguments(pair: tuple[Path, Path], capsys) -> None:
    gold_path, guess_path = pair
    two_outputs = {"id": "q1", "input": "q", "output": [{"answer": "a", "provenance": [{"wikipedia_id": "A"}]},
                                                         {"answer": "b", "provenance": [{"wikipedia_id": "B"}]}]}
    write_jsonl(gold_path, [two_outputs, gold("q2", ["B"])])
    assert main(["--gold", str(guess_path), "--guess", str(gold_path)]) == 2
    assert "swapped" in capsys.readouterr().err


def test_help_says_which_kilt_keys_are_left_out() -> None:
    text = build_parser().format_help()
    assert "entity_in_input" in text and "_in_context@k" in text and "left out" in text
    assert "same numbers and key names" not in text


def test_items_without_a_gold_page_in_the_corpus_are_counted(tmp_path: Path, caplog) -> None:
    corpus = Corpus(ids=["a0", "b0"], texts=["a", "b"], titles=["A", "B"], page_ids=["1", "2"])
    write_jsonl(tmp_path / "t-dev.jsonl", [gold("q1", ["1"]), gold("q2", ["9"]), gold("q3", ["8", "9"])])
    task = TaskSpec(name="t", train=str(tmp_path / "t-dev.jsonl"), dev=str(tmp_path / "t-dev.jsonl"))
    results = evaluate_task_rankings([task], "dev", {"t": ["q1", "q2", "q3"]}, {"t": [[0, 1], [1, 0], [0, 1]]},
                                     corpus, tmp_path / "eval", ks=[1])
    assert results["t"]["Rprec"] == pytest.approx(1 / 3)  # the two uncovered items score as misses
    assert json.loads((tmp_path / "eval" / COVERAGE).read_text()) == {"t": {"items": 3, "no_gold_page_in_corpus": 2}}
    assert "2 of 3 items have no gold page in the corpus" in caplog.text
