"""`multiret compare` on two tiny sweeps: seeds averaged, task-specific column, deltas, mismatches named."""

import json
import statistics

import pytest
from test_end_to_end import tiny_config

from multiret.cli import main as cli
from multiret.experiment.run import run


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, tiny_t5_dir, kilt_dir):
    tasks = {
        "qa": {"train": "qa-train.jsonl", "dev": "qa-dev.jsonl", "prompt": "QA", "max_query_length": 8},
        "el": {"train": "el-train.jsonl", "dev": "el-dev.jsonl", "prompt": "EL", "max_query_length": 8},
    }
    root = tmp_path_factory.mktemp("sweeps")
    for method, seed in (("naive", 1), ("naive", 2), ("taco", 1)):
        run(tiny_config(root / "multi" / f"{method}-{seed}", tiny_t5_dir, kilt_dir, tasks, f"method={method}",
                        f"seed={seed}", "trainer.max_steps=2", "task_name=mt"))
    for task in ("qa", "el"):
        run(tiny_config(root / "specific" / task, tiny_t5_dir, kilt_dir, tasks, f"data.task_names=[{task}]",
                        "job_type=task-specific", "trainer.max_steps=2", "data.batch_size=4"))
    return root


def metric(folder, task, name="Rprec"):
    return json.loads((folder / "eval" / "metrics.json").read_text())[task][name]


def test_table_averages_seeds_and_compares_with_task_specific(sweeps, tmp_path, capsys):
    assert cli(["compare", str(sweeps / "multi"), str(sweeps / "specific"), "--out", str(tmp_path), "--metrics", "Rprec"]) == 0
    text = (tmp_path / "comparison.md").read_text()
    assert text.startswith("5 runs")
    naive = [metric(sweeps / "multi" / f"naive-{s}", "qa") for s in (1, 2)]
    expected = f"{statistics.fmean(naive):.3f} ± {statistics.stdev(naive):.3f}"
    qa_row = next(line for line in text.splitlines() if line.startswith("| qa |"))
    assert qa_row.split(" | ")[1] == expected  # columns: task, mt: Naive, mt: TACO, task-specific
    delta_row = next(line for line in text.splitlines() if line.startswith("| Δ mt: TACO vs task-specific"))
    assert delta_row.split(" | ")[1] == f"{metric(sweeps / 'multi' / 'taco-1', 'qa') - metric(sweeps / 'specific' / 'qa', 'qa'):+.3f}"
    assert (tmp_path / "comparison-Rprec.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_over_other_task_sets_are_named(sweeps, tmp_path, tiny_t5_dir, kilt_dir):
    odd = tmp_path / "odd"
    tasks = {"qa": {"train": "qa-train.jsonl", "dev": "qa-dev.jsonl", "prompt": "QA", "max_query_length": 8}}
    run(tiny_config(odd, tiny_t5_dir, kilt_dir, tasks, "data.task_names=[qa]", "trainer.max_steps=1"))
    with pytest.raises(ValueError, match=r"multitask runs with other tasks than \['qa', 'el'\].*odd \(qa\)"):
        cli(["compare", str(sweeps / "multi"), str(odd), "--out", str(tmp_path / "out")])
