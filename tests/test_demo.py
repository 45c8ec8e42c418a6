"""`multiret demo --full` end to end on a tiny T5 and the tiny KILT fixture standing in for vital's three tasks."""

import io
import json
import re
import sys

import pytest
from omegaconf import OmegaConf

from multiret.cli import main as cli
from multiret.prepare.vital import vital_task_names

pytestmark = pytest.mark.slow  # seven tiny runs end to end; .ci/run runs it

COLUMNS = ["BM25", "zero-shot", "naive", "TACO", "task-specific"]
TACO = "multiret.mtl.taco.TACO"
# vital's task names over the fixture's files: qa and el, and qa again as the third task
FILES = {"vital-qa": "qa", "vital-el": "el", "vital-clue": "qa"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_t5_dir, kilt_dir):
    """The demo's folder and printed output, run once with --full."""
    out = tmp_path_factory.mktemp("demo")
    overrides = [
        "model=t5_prompted", f"model.encoder.path={tiny_t5_dir}", "logger=csv", "trainer=cpu", "trainer.max_steps=2",
        f"data.root={kilt_dir}", "data.builder=null", "data.batch_size=6", "data.max_passage_length=16", "data.bm25_top_k=5",
        "index.batch_size=16",
        *(f"data.tasks.{task}.{split}={stem}-{split}.jsonl" for task, stem in FILES.items() for split in ("train", "dev")),
        *(f"data.tasks.{task}.max_query_length=8" for task in FILES),
    ]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:  # capsys is per test; the demo runs once for the module
        patch.setattr(sys, "stdout", printed)
        patch.setenv("COLUMNS", "200")  # rich's table width, wide enough for six columns
        code = cli(["demo", "--full", "--out", str(out), *overrides])
    return out, code, printed.getvalue()


def test_demo_full_writes_every_column_for_every_task(demo):
    out, code, _ = demo
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["scores"]) == COLUMNS and list(results["seconds"]) == COLUMNS and results["total_seconds"] > 0
    for column in COLUMNS:
        assert list(results["scores"][column]) == [*vital_task_names(), "average"]
        for scores in results["scores"][column].values():
            assert 0 <= scores["Rprec"] <= 1 and 0 <= scores["recall@5"] <= 1


def test_task_specific_column_is_one_model_per_task_scored_on_its_own_task(demo):
    out, _, _ = demo
    scores = json.loads((out / "results.json").read_text())["scores"]["task-specific"]
    for task in vital_task_names():
        run = out / "task-specific" / task
        cfg = OmegaConf.load(run / "config.yaml")
        assert list(cfg.data.task_names) == [task] and cfg.job_type == "task-specific"
        assert cfg.data.corpus_max_pages is None  # --full searches the whole corpus
        assert scores[task] == pytest.approx(json.loads((run / "eval" / "metrics.json").read_text())[task])
    assert scores["average"]["Rprec"] == pytest.approx(sum(scores[t]["Rprec"] for t in vital_task_names()) / 3)


def test_multitask_columns_are_the_runs_they_name(demo):
    out, _, _ = demo
    scores = json.loads((out / "results.json").read_text())["scores"]
    for column, experiment in (("BM25", "vital_bm25"), ("zero-shot", "vital_zeroshot"), ("naive", "vital_naive"), ("TACO", "vital_taco")):
        cfg = OmegaConf.load(out / experiment / "config.yaml")
        assert cfg.task_name == experiment and cfg.data.corpus_max_pages is None
        metrics = json.loads((out / experiment / "eval" / "metrics.json").read_text())
        assert set(metrics) == set(vital_task_names())
        for task in vital_task_names():
            assert scores[column][task] == pytest.approx(metrics[task])
    assert OmegaConf.load(out / "vital_taco" / "config.yaml").method._target_ == TACO


def test_both_tables_show_the_same_numbers_as_results_json(demo):
    out, _, printed = demo
    scores = json.loads((out / "results.json").read_text())["scores"]
    markdown = (out / "results.md").read_text().splitlines()
    assert markdown[0] == "| task | " + " | ".join(COLUMNS) + " |"
    for line, task in zip(markdown[2:], [*vital_task_names(), "average"], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == task
        assert cells[1:] == [f"{scores[c][task]['Rprec']:.3f} / {scores[c][task]['recall@5']:.3f}" for c in COLUMNS]
    assert "vital dev: page-level R-precision / recall@5" in printed
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in printed.splitlines()
            if re.match(r"^\s*│\s*(vital-|average)", line)}
    assert rows == {task: [f"{scores[c][task]['Rprec']:.3f} / {scores[c][task]['recall@5']:.3f}" for c in COLUMNS]
                    for task in (*vital_task_names(), "average")}
    assert f"results: {out}/results.md and results.json" in printed
