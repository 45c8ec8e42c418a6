"""Validation while training: the metrics on hand cases, the logged curve, the best checkpoint, resuming, DDP."""

import csv
import hashlib
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from multiret.data.candidate_pool import candidate_pool
from multiret.data.corpus import Corpus
from multiret.data.kilt import Query
from multiret.eval.dev_metrics import PageRPrecision, retrieval_metrics
from multiret.eval.dev_validation import candidates
from multiret.eval.kilt_metrics import evaluate_kilt, guess_record, page_ranking
from multiret.eval.retrieval import gold_records
from multiret.experiment import stages
from multiret.experiment.run import run
from multiret.index.encode import encode_texts

from helpers import tiny_config

VALIDATE = ("trainer.val_check_interval=2", "callbacks.dev_validation.max_queries=8")


def gold(qid, *outputs):
    return {"id": qid, "input": "q", "output": [{"provenance": [{"wikipedia_id": p} for p in pages]} for pages in outputs]}


def test_page_rprecision_is_kilts_on_a_hand_case():
    records = [gold("a", ["1", "2"], ["3"]), gold("b", ["7", "8"])]
    guesses = [["3", "1", "5"], ["9", "7", "8"]]
    metric = PageRPrecision()
    metric.update(guesses[:1], records[:1])
    metric.update(guesses[1:], records[1:])
    # a: output [1, 2] gets 1/2 of its top 2, output [3] all of its top 1, the best counts; b: [9, 7] holds one of 7, 8
    assert float(metric.compute()) == pytest.approx((1.0 + 0.5) / 2)
    kilt = evaluate_kilt(records, [guess_record(r["id"], g) for r, g in zip(records, guesses)], [1])
    assert float(metric.compute()) == pytest.approx(kilt["Rprec"])


def test_retrieval_metrics_on_a_hand_case():
    # pages p0..p11 scored 12..1; gold: p1 (rank 2), p11 (rank 12) and a page the pool lacks
    names = np.array([f"p{i}" for i in range(12)])
    scores = torch.arange(12, 0, -1, dtype=torch.float32)[None]
    query = Query(qid="q", text="t", gold_pages=["p1", "p11", "absent"])
    ranked = [[str(names[j]) for j in scores.topk(10).indices[0].tolist()]]  # deep enough for @10, not for p11
    preds, target, indexes = candidates([query], ranked, scores, names, 0)
    metrics = retrieval_metrics([5, 20])
    metrics.update(preds, target, indexes=indexes)
    got = {k: float(v) for k, v in metrics.compute().items()}
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert got == pytest.approx({"MRR@10": 1 / 2, "nDCG@10": (1 / math.log2(3)) / ideal, "Recall@5": 1 / 3, "Recall@20": 2 / 3})


def test_candidate_pool_holds_golds_and_negatives_and_a_seeded_sample():
    corpus = Corpus.from_rows((f"{i}", f"text {i}", f"Page {i}", f"{i}") for i in range(100))
    queries = [Query("a", "x", ["3"], positives=[3], negatives=[50, 51]), Query("b", "y", ["7"], positives=[7])]
    pool = candidate_pool(corpus, queries, sample=10, whole_corpus_max=20, seed=1)
    assert not pool.whole_corpus and len(pool.rows) == 14 and {3, 7, 50, 51} <= set(pool.rows.tolist())
    assert np.array_equal(pool.rows, candidate_pool(corpus, queries, 10, 20, seed=1).rows)
    assert not np.array_equal(pool.rows, candidate_pool(corpus, queries, 10, 20, seed=2).rows)
    assert candidate_pool(corpus, queries, 10, whole_corpus_max=100, seed=1).whole_corpus
    assert 51 not in candidate_pool(corpus, queries, 0, 20, seed=1, hard_negatives=1).rows


def logged(run_dir, prefix="val/"):
    """``{(name, step): value}`` of every metric under ``prefix`` in a run's metrics.csv files (a resumed run adds one)."""
    values = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with open(path, newline="") as f:
            values.update({(name, int(row["step"])): float(value) for row in csv.DictReader(f)
                           for name, value in row.items() if name.startswith(prefix) and value})
    return values


def test_training_logs_a_curve_keeps_the_best_checkpoint_and_step_0_is_the_untrained_model(tmp_path, tiny_t5_dir, kilt_dir,
                                                                                            kilt_tasks):
    # a sampled pool (the fixture's 80 passages are over whole_corpus_max), so the pool is really the recorded one
    options = (*VALIDATE, "callbacks.dev_validation.whole_corpus_max=10", "callbacks.dev_validation.pool_sample=30",
               "trainer.max_steps=5", "stages=[train]")
    out = tmp_path / "run"
    cfg = tiny_config(out, tiny_t5_dir, kilt_dir, kilt_tasks, *options)
    run(cfg)
    values = logged(out)
    steps = sorted({step for _, step in values})
    assert steps == [0, 2, 4, 5]  # step 0, every 2 steps, the last step
    names = {name for name, _ in values}
    assert {f"val/{t}/{m}" for t in ("qa", "el", "average") for m in ("Rprec", "MRR@10", "nDCG@10", "Recall@5", "Recall@20")} == names
    for step in steps:
        assert values[("val/average/Rprec", step)] == pytest.approx((values[("val/qa/Rprec", step)] + values[("val/el/Rprec", step)]) / 2)

    manifest = json.loads((out / "manifest.json").read_text())
    pool = manifest["validation"]["tasks"]["qa"]
    assert pool["queries"] == 8 and not pool["whole_corpus"]
    curve = [values[("val/average/Rprec", step)] for step in steps]
    best_step = steps[int(np.argmax(curve))]  # the first of equal scores, as a strictly-better rule keeps it
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == best_step
    assert manifest["evaluated_weights"]["checkpoint"] == "best" and manifest["evaluated_weights"]["step"] == best_step
    assert manifest["evaluated_weights"]["score"] == pytest.approx(max(curve))

    # step 0 again, outside the callback: the freshly seeded model, its pool rebuilt and checked against the manifest,
    # passages ranked by dot product, pages scored by KILT's own evaluation
    model, datamodule = stages.build(cfg)
    datamodule.setup("fit")
    queries = datamodule.heldout_queries()
    for task in datamodule.tasks:
        chosen = queries[task.name][:8]
        rows = candidate_pool(datamodule.corpus, chosen, 30, 10, cfg.seed, 1).rows
        ids = "\n".join(datamodule.corpus.ids[int(r)] for r in rows)
        assert hashlib.sha256(ids.encode()).hexdigest() == manifest["validation"]["tasks"][task.name]["ids_sha256"]
        model.eval()
        passages = encode_texts([datamodule.corpus.passage_text(int(r)) for r in rows], datamodule.collator.passages,
                                model.encode_passages, show_progress=False)
        vectors = encode_texts([q.text for q in chosen], lambda texts, task=task: datamodule.collator.queries(texts, task),
                               lambda i, m, task=task: model.encode_queries(i, m, task=task.name), show_progress=False)
        order = np.argsort(-(vectors @ passages.T), axis=1, kind="stable")
        guesses = [guess_record(q.qid, page_ranking([datamodule.corpus.page_ids[int(rows[j])] for j in ranking]))
                   for q, ranking in zip(chosen, order)]
        kilt = evaluate_kilt(gold_records(task, "dev", [q.qid for q in chosen], datamodule.corpus), guesses, [1])
        assert values[(f"val/{task.name}/Rprec", 0)] == pytest.approx(kilt["Rprec"], abs=1e-6)


class Interrupt(L.Callback):
    """Stops a training before step 3 (step 2 validated and its last.ckpt written), as a killed job would."""

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 2:
            raise RuntimeError("interrupted")


class Probe(L.Callback):
    """Notes the best score and best.ckpt's bytes when a (resumed) training starts."""

    def on_train_start(self, trainer, pl_module):
        (best,) = [c for c in trainer.checkpoint_callbacks if c.monitor]
        self.score = None if best.best_model_score is None else float(best.best_model_score)
        self.digest = hashlib.sha256(Path(best.best_model_path).read_bytes()).hexdigest() if best.best_model_path else None


def test_resume_keeps_the_best_score_and_file(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, monkeypatch):
    options = (*VALIDATE, "stages=[train]", "resume=true")
    straight = tmp_path / "straight"
    run(tiny_config(straight, tiny_t5_dir, kilt_dir, kilt_tasks, *options))
    folder = tmp_path / "resumed"
    cfg = tiny_config(folder, tiny_t5_dir, kilt_dir, kilt_tasks, *options)
    shared = stages.instantiate_named
    probe = Probe()
    with monkeypatch.context() as patch:
        patch.setattr(stages, "instantiate_named", lambda group: [*shared(group), Interrupt()] if group is cfg.callbacks else shared(group))
        with pytest.raises(RuntimeError, match="interrupted"):
            run(cfg)
    before = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = [v for k, v in before["callbacks"].items() if k.startswith("BestCheckpoint")]
    digest = hashlib.sha256((folder / "checkpoints" / "best.ckpt").read_bytes()).hexdigest()
    with monkeypatch.context() as patch:
        patch.setattr(stages, "instantiate_named", lambda group: [*shared(group), probe] if group is cfg.callbacks else shared(group))
        run(cfg)
    assert probe.score == pytest.approx(float(state["best_model_score"])) and probe.digest == digest
    assert sorted({step for _, step in logged(folder)}) == [0, 2, 4]  # step 0 is not scored again
    a = torch.load(straight / "checkpoints" / "best.ckpt", weights_only=False)
    b = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


@pytest.mark.slow  # two spawned processes: 45 s of the file's 70 s on the 2-core machine
def test_two_processes_log_the_validation_of_one(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    # odd sizes so the processes' shares of queries and passages differ; Adam's eps as in test_ddp_training
    options = ("stages=[train]", "trainer.max_steps=2", "optimizer.eps=1e-3", "trainer.val_check_interval=2",
               "callbacks.dev_validation.max_queries=7", "callbacks.dev_validation.whole_corpus_max=10",
               "callbacks.dev_validation.pool_sample=31")
    run(tiny_config(tmp_path / "one", tiny_t5_dir, kilt_dir, kilt_tasks, *options))
    run(tiny_config(tmp_path / "two", tiny_t5_dir, kilt_dir, kilt_tasks, *options, "trainer.devices=2",
                    "trainer.strategy=ddp_spawn"))
    one, two = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert one.keys() == two.keys() and {step for _, step in one} == {0, 2}
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-5), key


def test_validation_interval_must_be_whole_steps(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    from multiret.errors import UserError

    for value in ("1.0", "0", "null"):
        with pytest.raises(UserError, match=f"trainer.val_check_interval={'None' if value == 'null' else value}"):
            run(tiny_config(tmp_path / "run", tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[train]",
                            f"trainer.val_check_interval={value}"))
    assert not (tmp_path / "run").exists()  # refused before the run folder is written


def test_validation_can_be_turned_off(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    out = tmp_path / "run"
    run(tiny_config(out, tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[train]", "callbacks.dev_validation=null"))
    assert not logged(out) and not (out / "checkpoints" / "best.ckpt").exists()
    assert json.loads((out / "manifest.json").read_text())["evaluated_weights"]["checkpoint"] == "last"


def test_progress_lines_go_to_a_log_file_every_n_steps():
    import io
    from types import SimpleNamespace

    from multiret.experiment.progress import ProgressLines, progress_line

    assert progress_line(50, 100, {"qa": 1.23456, "el": 0.5}, 2.0) == "step 50/100 | loss qa 1.235 el 0.500 | 2.00 steps/s | 00:00:25 left"
    log = io.StringIO()  # not a terminal
    callback = ProgressLines(every_n_steps=2, every_seconds=1e9, stream=log)
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, max_steps=5,
                              callback_metrics={"train/loss/qa": torch.tensor(1.0), "train/loss": torch.tensor(1.0)})
    callback.on_train_start(trainer, None)
    for step in range(1, 6):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step - 1)
    assert [line.split(" | ")[0] for line in log.getvalue().splitlines()] == ["step 2/5", "step 4/5", "step 5/5"]
    assert "loss qa 1.000 |" in log.getvalue()


def test_early_stopping_is_one_option_away_and_watches_the_best_checkpoints_score(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    from lightning.pytorch.callbacks import EarlyStopping

    from multiret.experiment.loggers import instantiate_named

    cfg = tiny_config(tmp_path / "run", tiny_t5_dir, kilt_dir, kilt_tasks)
    assert not any(isinstance(c, EarlyStopping) for c in instantiate_named(cfg.callbacks))  # off by default
    cfg = tiny_config(tmp_path / "run", tiny_t5_dir, kilt_dir, kilt_tasks, "callbacks=early_stopping")
    (stopper,) = [c for c in instantiate_named(cfg.callbacks) if isinstance(c, EarlyStopping)]
    assert stopper.monitor == cfg.callbacks.best_checkpoint.monitor == "val/average/Rprec"


def test_eval_checkpoint_takes_best_or_last(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    from multiret.errors import UserError
    from multiret.experiment.validation import validate

    with pytest.raises(UserError, match=r"eval_checkpoint='newest'; choose one of \['best', 'last'\]"):
        validate(tiny_config(tmp_path / "run", tiny_t5_dir, kilt_dir, kilt_tasks, "eval_checkpoint=newest"))


def test_a_test_split_run_validates_on_dev_so_the_best_checkpoint_never_sees_test(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    from multiret.errors import UserError
    from multiret.experiment.validation import validate

    tasks = {name: {**spec, "test": spec["train"]} for name, spec in kilt_tasks.items()}  # the fixture has no test split
    options = (*VALIDATE, "trainer.max_steps=2", "stages=[train]", "data.eval_split=test", "eval_checkpoint=best")
    refused = tiny_config(tmp_path / "refused", tiny_t5_dir, kilt_dir, kilt_tasks, *options)
    refused.data.tasks = tasks
    with pytest.raises(UserError, match=r"scores data.eval_split=test, so eval_checkpoint=best"):
        validate(refused)
    out = tmp_path / "run"
    cfg = tiny_config(out, tiny_t5_dir, kilt_dir, kilt_tasks, *options, "data.validation_split=dev")
    cfg.data.tasks = tasks
    validate(cfg)
    run(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["split"] == "dev"
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert {("val/average/Rprec", 0), ("val/average/Rprec", 2)} <= set(logged(out))
