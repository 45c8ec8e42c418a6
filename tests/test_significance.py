"""Paired significance tests: the macro-averaged difference, exact sign-flip p-values, and `compare --paired`."""

import json

import pytest
import yaml

from multiret.cli import main as cli
from multiret.eval.kilt_metrics import evaluate_kilt, guess_record, item_scores
from multiret.report.significance import mean_over_seeds, paired_test


def test_macro_average_difference_and_exact_sign_flip_p_value():
    a = {"qa": {"1": 1.0, "2": 1.0, "3": 1.0}, "el": {"4": 0.5, "5": 0.0}}
    b = {"qa": {"1": 0.0, "2": 0.0, "3": 0.0}, "el": {"4": 0.5, "5": 0.0}}
    result = paired_test(a, b, ["qa", "el"])
    assert result.difference == pytest.approx((1.0 + 0.0) / 2)  # mean over tasks of each task's mean difference
    assert result.queries == 5
    # 2^5 sign patterns are enumerated exactly; |mean| reaches the observed one only when the three
    # non-zero differences share a sign: 2 × 2^2 of 32 patterns.
    assert result.p_value == pytest.approx(8 / 32)
    assert paired_test(a, b, ["qa"]).difference == pytest.approx(1.0)
    assert paired_test(a, a, ["qa", "el"]).p_value == pytest.approx(1.0)


def test_interval_brackets_the_difference_and_excludes_zero_for_a_clear_win():
    a = {"t": {str(i): 1.0 if i % 4 else 0.0 for i in range(200)}}
    b = {"t": {str(i): 1.0 if i % 2 else 0.0 for i in range(200)}}
    result = paired_test(a, b, ["t"], resamples=2000)
    assert result.difference == pytest.approx(0.25)
    assert 0 < result.low < result.difference < result.high
    assert result.p_value < 0.001


def test_seeds_are_averaged_per_query_and_query_sets_must_agree():
    seeds = [{"qa": {"1": 1.0, "2": 0.0}}, {"qa": {"1": 0.0, "2": 0.0}}]
    assert mean_over_seeds(seeds, "arm") == {"qa": {"1": 0.5, "2": 0.0}}
    specific = [{"qa": {"1": 1.0}}, {"el": {"9": 0.0}}]  # task-specific: one task per run
    assert mean_over_seeds(specific, "arm") == {"qa": {"1": 1.0}, "el": {"9": 0.0}}
    with pytest.raises(ValueError, match="runs of task qa were evaluated on different queries"):
        mean_over_seeds([{"qa": {"1": 1.0}}, {"qa": {"2": 1.0}}], "arm")
    with pytest.raises(ValueError, match="task qa: the two arms were evaluated on different queries"):
        paired_test({"qa": {"1": 1.0}}, {"qa": {"2": 1.0}}, ["qa"])
    drawn = [{"qa": {"1": 1.0, "2": 0.0}}, {"qa": {"2": 1.0, "3": 0.0}}]  # each seed sampled its own queries: pooled
    assert mean_over_seeds(drawn, "arm", seeds=[13, 14]) == {"qa": {"seed 13: 1": 1.0, "seed 13: 2": 0.0,
                                                                 "seed 14: 2": 1.0, "seed 14: 3": 0.0}}
    with pytest.raises(ValueError, match="runs of task qa were evaluated on different queries"):
        mean_over_seeds(drawn, "arm", seeds=[13, 13])


def test_item_scores_average_to_evaluate_kilt():
    gold = [
        {"id": "a", "output": [{"provenance": [{"wikipedia_id": "1"}, {"wikipedia_id": "2"}]}]},
        {"id": "b", "output": [{"provenance": [{"wikipedia_id": "3"}]}, {"answer": "x"}]},
    ]
    guesses = [guess_record("a", ["2", "5", "1"]), guess_record("b", ["4", "3"])]
    items = item_scores(gold, guesses, [1, 5])
    mean = evaluate_kilt(gold, guesses, [1, 5])
    assert {name: sum(s[name] for s in items.values()) / 2 for name in mean} == pytest.approx(mean)
    assert items["a"]["Rprec"] == pytest.approx(0.5)


def fake_run(folder, label, method, job_type, tasks, hits, seed):
    """A run folder as `multiret train` leaves it: config.yaml, eval/metrics.json and per-task gold/guess files."""
    config = {"task_name": label, "method": {"_target_": f"multiret.mtl.{method}"}, "job_type": job_type,
              "data": {"task_names": tasks, "eval_split": "test"}, "seed": seed}
    (folder / "eval").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {}
    for task in tasks:
        gold = [{"id": f"{task}{i}", "output": [{"provenance": [{"wikipedia_id": f"p{i}"}]}]} for i in range(len(hits[task]))]
        guesses = [guess_record(g["id"], [f"p{i}" if hit else "wrong"]) for i, (g, hit) in enumerate(zip(gold, hits[task]))]
        for name, records in (("gold", gold), ("guess", guesses)):
            (folder / "eval" / f"{task}-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics[task] = evaluate_kilt(gold, guesses, [1, 5])
    (folder / "eval" / "metrics.json").write_text(json.dumps(metrics))


def test_compare_paired_reads_each_runs_guess_files(tmp_path):
    qa_a, qa_b = [1, 1, 1, 1, 0, 1], [0, 1, 0, 1, 0, 1]
    el_a, el_b = [1, 0, 1, 0], [1, 0, 1, 0]
    for seed in (1, 2):
        fake_run(tmp_path / "runs" / f"taco{seed}", "mt", "taco.TACO", "multitask", ["qa", "el"], {"qa": qa_a, "el": el_a}, seed)
        fake_run(tmp_path / "runs" / f"naive{seed}", "mt", "naive.Naive", "multitask", ["qa", "el"], {"qa": qa_b, "el": el_b}, seed)
    out = tmp_path / "out"
    assert cli(["compare", str(tmp_path / "runs"), "--out", str(out), "--metrics", "Rprec",
                "--paired", "mt: TACO", "mt: Naive"]) == 0
    rows = {line.split(" | ")[1]: line.split(" | ") for line in (out / "comparison.md").read_text().splitlines()
            if line.startswith("| mt: TACO − mt: Naive")}
    assert rows["qa"][2] == f"{(sum(qa_a) - sum(qa_b)) / 6:+.3f}" and rows["qa"][5].rstrip(" |") == "6"
    assert rows["el"][2] == "+0.000" and float(rows["el"][4]) == 1.0
    assert rows["average"][2] == f"{(sum(qa_a) - sum(qa_b)) / 6 / 2:+.3f}" and rows["average"][5].rstrip(" |") == "10"
    with pytest.raises(ValueError, match="no column 'mt: PCGrad'"):
        cli(["compare", str(tmp_path / "runs"), "--out", str(out), "--paired", "mt: PCGrad", "mt: Naive"])
