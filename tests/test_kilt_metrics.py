"""KILT page-level metrics on hand-made items; expected numbers are worked out in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multiret.data.jsonl import DataFormatError, write_jsonl
from multiret.eval.kilt_eval_cli import main
from multiret.eval.kilt_metrics import (
    PartialSet,
    evaluate_kilt,
    evaluate_kilt_files,
    evidence_rank,
    gold_evidence_sets,
    guess_pages,
    guess_record,
    page_ranking,
    ranking_metrics,
    rprecision,
)


def gold(item_id: str, *outputs: list | None) -> dict:
    """A gold record; each output is a list of page ids, or None for an answer-only output."""
    return {
        "id": item_id,
        "input": "question",
        "output": [
            {"answer": "a"} if pages is None else {"answer": "a", "provenance": [{"wikipedia_id": p} for p in pages]}
            for pages in outputs
        ],
    }


def scores(gold_record: dict, guesses: list[str], ks: list[int]) -> dict[str, float]:
    return evaluate_kilt([gold_record], [guess_record(gold_record["id"], guesses)], ks)


def test_page_ranking_keeps_first_occurrence_of_stripped_ids() -> None:
    assert page_ranking(["10", "10", " 7", "3", "7 ", "10"]) == ["10", "7", "3"]


def test_single_page_gold() -> None:
    # R = 1 and the top guess B is wrong: Rprec 0. Rank [miss, hit, miss]: P@1 0, P@2 1/2, P@5 1/5;
    # the only set is found within 2 and 5, so recall and success are 1 there.
    result = scores(gold("q", ["A"]), ["B", "A", "C"], [1, 2, 5])
    assert result == pytest.approx(
        {
            "Rprec": 0.0,
            "precision@1": 0.0,
            "precision@2": 0.5,
            "recall@2": 1.0,
            "success_rate@2": 1.0,
            "precision@5": 0.2,
            "recall@5": 1.0,
            "success_rate@5": 1.0,
        }
    )


def test_multi_page_evidence_set_completes_at_guess_rank_three() -> None:
    # HotpotQA-like {A, B}: R = 2, top-2 is [A, X] so Rprec 1/2. Walk: A -> [partial];
    # X -> [partial, miss]; B empties the set, its partial marker is removed and a hit appended
    # -> [miss, hit]. The set completes at guess rank 3 but counts at rank position 2.
    item = gold("q", ["A", "B"])
    assert evidence_rank(["A", "X", "B", "Y"], gold_evidence_sets(item)) == [False, True, False]
    result = scores(item, ["A", "X", "B", "Y"], [1, 2, 3])
    assert result["Rprec"] == pytest.approx(0.5)
    assert result["precision@1"] == 0.0
    assert result["precision@2"] == pytest.approx(0.5)
    assert result["recall@2"] == 1.0
    assert result["precision@3"] == pytest.approx(1 / 3)


def test_partially_covered_set_is_a_marker_not_a_hit() -> None:
    # Only A of {A, B} is found: the set holds a partial marker, never a hit, so nothing succeeds;
    # top-2 [A, X] still gives Rprec 1/2.
    item = gold("q", ["A", "B"])
    assert evidence_rank(["A", "X"], gold_evidence_sets(item)) == [PartialSet(0), False]
    result = scores(item, ["A", "X"], [1, 5])
    assert result["Rprec"] == pytest.approx(0.5)
    assert result["precision@5"] == result["recall@5"] == result["success_rate@5"] == 0.0


def test_several_outputs_max_rprecision_and_recall_over_sets() -> None:
    # Outputs {A}, {B, C}, answer-only. Rprec per output: [B] vs {A} 0; [B, C] vs {B, C} 2/2; 0.
    # Max is 1. Sets {A}, {B, C}: B -> [partial]; C -> [hit]; D -> [hit, miss]; A -> [hit, miss, hit].
    # P@1 1, P@2 1/2, R@2 1/2, P@3 2/3, R@3 2/2.
    item = gold("q", ["A"], ["B", "C"], None)
    guesses = ["B", "C", "D", "A"]
    assert rprecision(guesses, item) == 1.0
    assert ranking_metrics(guesses, item, [1, 2, 3]) == pytest.approx(
        {
            "precision@1": 1.0,
            "precision@2": 0.5,
            "recall@2": 0.5,
            "success_rate@2": 1.0,
            "precision@3": 2 / 3,
            "recall@3": 1.0,
            "success_rate@3": 1.0,
        }
    )


def test_answer_only_output_is_ignored_for_evidence_sets() -> None:
    # An answer-only output scores 0 in the Rprec max and is not a set: same numbers as without it.
    with_answer = gold("q", None, ["A"], None)
    assert gold_evidence_sets(with_answer) == [{"A"}]
    assert scores(with_answer, ["A", "B"], [1, 5]) == scores(gold("q", ["A"]), ["A", "B"], [1, 5])
    assert scores(with_answer, ["A", "B"], [5])["recall@5"] == 1.0


def test_gold_without_provenance_scores_zero_but_still_counts_in_average() -> None:
    # Item q1 is perfect (1 everywhere); q2 has only answers, so it scores 0; averages are 1/2.
    gold_records = [gold("q1", ["A"]), gold("q2", None, None)]
    guesses = [guess_record("q1", ["A"]), guess_record("q2", ["A", "B"])]
    result = evaluate_kilt(gold_records, guesses, [1, 5])
    assert result == pytest.approx(
        {"Rprec": 0.5, "precision@1": 0.5, "precision@5": 0.1, "recall@5": 0.5, "success_rate@5": 0.5}
    )


def test_empty_provenance_list_is_a_set_that_never_completes() -> None:
    # As in KILT, "provenance": [] is an evidence set of its own (R = 0 scores 0 for Rprec), so
    # sets are {A} and {}: finding A gives recall 1/2.
    result = scores(gold("q", ["A"], []), ["A"], [5])
    assert result["Rprec"] == 1.0
    assert result["recall@5"] == pytest.approx(0.5)


def test_page_in_two_sets_enters_the_rank_once_per_set() -> None:
    # Sets {A}, {A, B}: A completes set 0 (hit) and marks set 1 -> [hit, partial]; B completes set 1
    # -> [hit, hit]. Two hits from two guesses: P@2 1, R@2 1.
    item = gold("q", ["A"], ["A", "B"])
    assert evidence_rank(["A", "B"], gold_evidence_sets(item)) == [True, True]
    assert scores(item, ["A", "B"], [2])["precision@2"] == 1.0


def test_identical_evidence_sets_count_once() -> None:
    # Two outputs with the same page give one set, so finding it is recall 1, not 1/2.
    assert scores(gold("q", ["A"], ["A"]), ["A"], [2])["recall@2"] == 1.0


def test_duplicate_guesses_are_removed_before_scoring() -> None:
    # [A, A, B] becomes [A, B]: top-2 covers {A, B} (Rprec 1) and the set is a hit at rank 1.
    result = scores(gold("q", ["A", "B"]), ["A", "A", "B"], [1])
    assert result == {"Rprec": 1.0, "precision@1": 1.0}


def test_ids_are_compared_as_stripped_strings() -> None:
    # Gold pages " 12 " and 7 (an int) match guesses "12" and " 7"; item ids " q " and "q" match.
    gold_record = gold(" q ", [" 12 ", 7])
    result = evaluate_kilt([gold_record], [guess_record("q", ["12", " 7"])], [1])
    assert result == {"Rprec": 1.0, "precision@1": 1.0}


def test_k_larger_than_the_ranking() -> None:
    # One hit in a one-entry rank: P@100 = 1/100, but recall and success are 1.
    result = scores(gold("q", ["A"]), ["A"], [100])
    assert result == pytest.approx({"Rprec": 1.0, "precision@100": 0.01, "recall@100": 1.0, "success_rate@100": 1.0})


def test_no_guesses_score_zero() -> None:
    assert set(scores(gold("q", ["A"]), [], [1, 5]).values()) == {0.0}


def test_guess_with_answer_only_output_uses_its_provenance_output() -> None:
    record = {"id": "q", "output": [{"answer": "x"}, {"provenance": [{"wikipedia_id": "A"}, {"wikipedia_id": "B"}]}]}
    assert guess_pages(record) == ["A", "B"]


def test_guess_id_missing_from_gold_names_the_id() -> None:
    with pytest.raises(ValueError, match="'q9' of guess is not in gold"):
        evaluate_kilt([gold("q1", ["A"])], [guess_record("q1", ["A"]), guess_record("q9", ["A"])], [1])


def test_gold_id_without_guess_names_the_id() -> None:
    with pytest.raises(ValueError, match="'q2' of gold has no guess"):
        evaluate_kilt([gold("q1", ["A"]), gold("q2", ["B"])], [guess_record("q1", ["A"])], [1])


@pytest.mark.parametrize(
    "output",
    [
        [{"provenance": [{"wikipedia_id": "A"}]}, {"provenance": [{"wikipedia_id": "B"}]}],
        [{"answer": "x"}],
        [{"provenance": [{"title": "A"}]}],
        [{"provenance": "A"}],
    ],
)
def test_malformed_guess_record_names_the_id(output: list) -> None:
    with pytest.raises(DataFormatError, match="guess record 'q1'"):
        evaluate_kilt([gold("q1", ["A"])], [{"id": "q1", "output": output}], [1])


@pytest.mark.parametrize("ks", [[0, 5], [], [1.5]])
def test_bad_ks_are_rejected(ks: list) -> None:
    with pytest.raises(ValueError, match="positive integers"):
        evaluate_kilt([gold("q1", ["A"])], [guess_record("q1", ["A"])], ks)


def write_pair(tmp_path: Path, guess_ids: list[str]) -> tuple[Path, Path]:
    gold_path, guess_path = tmp_path / "gold.jsonl", tmp_path / "guess.jsonl"
    write_jsonl(gold_path, [gold("q1", ["A"]), gold("q2", ["B", "C"])])
    write_jsonl(guess_path, [guess_record(i, ["A", "B", "C"]) for i in guess_ids])
    return gold_path, guess_path


def test_malformed_json_line_error_names_file_and_line(tmp_path: Path) -> None:
    gold_path, guess_path = write_pair(tmp_path, ["q1", "q2"])
    guess_path.write_text(guess_path.read_text() + "{not json\n")
    with pytest.raises(DataFormatError, match=f"{guess_path}:3"):
        evaluate_kilt_files(gold_path, guess_path, [1])


def test_cli_json_has_kilt_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # q1: [A, B, C] vs {A}: Rprec 1, hit at rank 1. q2 vs {B, C}: top-2 [A, B] -> Rprec 1/2;
    # rank [miss, hit] (B's marker replaced by C's hit). Averages: Rprec 3/4, P@1 1/2, P@5 2/10.
    gold_path, guess_path = write_pair(tmp_path, ["q1", "q2"])
    assert main(["--gold", str(gold_path), "--guess", str(guess_path), "--ks", "1,5,20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {
        "Rprec",
        "precision@1",
        "precision@5",
        "precision@20",
        "recall@5",
        "recall@20",
        "success_rate@5",
        "success_rate@20",
    }
    assert result["Rprec"] == pytest.approx(0.75)
    assert result["precision@1"] == pytest.approx(0.5)
    assert result["precision@5"] == pytest.approx(0.2)
    assert result["recall@20"] == result["success_rate@20"] == 1.0


def test_cli_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold_path, guess_path = write_pair(tmp_path, ["q1", "q2"])
    assert main(["--gold", str(gold_path), "--guess", str(guess_path), "--ks", "1,5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Rprec", "0.7500"]
    assert len({line.rindex(" ") for line in lines}) == 1


def test_cli_mismatch_returns_2_with_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold_path, guess_path = write_pair(tmp_path, ["q1"])
    assert main(["--gold", str(gold_path), "--guess", str(guess_path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("multiret kilt-eval: error: ")
    assert "'q2'" in captured.err and captured.err.count("\n") == 1


def test_cli_missing_file_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gold_path, _ = write_pair(tmp_path, ["q1", "q2"])
    assert main(["--gold", str(gold_path), "--guess", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("ks", ["0,5", "1,x", "2.5", ""])
def test_cli_bad_ks_is_a_usage_error(tmp_path: Path, ks: str) -> None:
    gold_path, guess_path = write_pair(tmp_path, ["q1", "q2"])
    with pytest.raises(SystemExit) as exit_info:
        main(["--gold", str(gold_path), "--guess", str(guess_path), "--ks", ks])
    assert exit_info.value.code == 2
