"""ANCE-style episodes on a tiny T5: mined negatives, weights carried over, resume after an interruption, config changes refused."""

import itertools
import json
import sys
import threading
import time

import pytest
import torch

from multiret.cli import main as cli
from multiret.data.jsonl import read_jsonl
from multiret.experiment import episodes, stages
from multiret.model.biencoder import BiEncoder

from helpers import assert_same, tiny_config

# 2 episodes of 2 steps, a checkpoint every step (so an interrupted training has one to resume from)
OPTIONS = ("episodes.count=2", "episodes.mine_depth=8", "episodes.mine_top_k=5", "trainer.max_steps=2",
           "callbacks.model_checkpoint.every_n_train_steps=1")


def config(out, tiny_t5_dir, kilt_dir, kilt_tasks, *overrides):
    return tiny_config(out, tiny_t5_dir, kilt_dir, kilt_tasks, *OPTIONS, *overrides, config_name="episodes")


def count_stages(monkeypatch) -> dict[str, list]:
    """Wrap every stage the episodes run so that the test sees which ran (training: with which ckpt_path)."""
    calls: dict[str, list] = {"train": [], "index": [], "evaluate": [], "mine": []}

    def spy(name, real):
        def wrapper(cfg, *args):
            calls[name].append(cfg.ckpt_path if name == "train" else cfg.paths.output_dir)
            return real(cfg, *args)
        return wrapper

    monkeypatch.setattr(episodes, "train_stage", spy("train", episodes.train_stage))
    for name in ("index", "evaluate", "mine"):
        monkeypatch.setitem(episodes.AFTER_TRAINING, name, spy(name, episodes.AFTER_TRAINING[name]))
    return calls


def final_weights(out, episode):
    return torch.load(out / f"episode_{episode}" / "checkpoints" / "last.ckpt", weights_only=False)


def test_two_episodes_mine_negatives_and_carry_the_weights(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, monkeypatch):
    loaded = {}
    real_load = stages.load_weights

    def remember_init(model, path, key="ckpt_path"):
        real_load(model, path, key)
        if key == "init_from":
            loaded[path] = {k: v.clone() for k, v in model.state_dict().items()}

    monkeypatch.setattr(stages, "load_weights", remember_init)
    out = tmp_path / "run"
    results = episodes.run_episodes(config(out, tiny_t5_dir, kilt_dir, kilt_tasks))

    for task in ("qa", "el"):
        train = {r["id"]: r["output"][0]["provenance"][0]["wikipedia_id"] for r in read_jsonl(kilt_dir / f"{task}-train.jsonl")}
        mined = {r["id"]: r["negatives"] for r in read_jsonl(out / "episode_0" / "negatives" / f"{task}.jsonl")}
        assert mined.keys() == train.keys()
        for qid, negatives in mined.items():
            assert len(negatives) == 5
            assert all(passage.split("_")[0] != train[qid] for passage in negatives), qid  # passage ids are <page>_<n>
    assert not (out / "episode_1" / "negatives").exists()  # the last episode mines for nobody

    # episode 1 starts from episode 0's final weights, with a fresh optimizer
    start = loaded[str(out / "episode_0" / "checkpoints" / "last.ckpt")]
    previous, last = final_weights(out, 0), final_weights(out, 1)
    for key, value in previous["state_dict"].items():
        assert torch.equal(start[key], value), key
    assert any(not torch.equal(value, last["state_dict"][key]) for key, value in previous["state_dict"].items())
    assert last["global_step"] == 2
    assert "step_offset: 2\n" in (out / "episode_1" / "config.yaml").read_text()  # episode 1 trains on the next batches
    assert all(s["step"] == 2 for s in last["optimizer_states"][0]["state"].values())

    assert set(results) == {"episode_0", "episode_1"} and set(results["episode_1"]) == {"qa", "el", "average"}
    assert json.loads((out / "results.json").read_text()) == results
    state = json.loads((out / "episodes.json").read_text())
    assert state["finished"] == {"episode_0": ["train", "index", "evaluate", "mine"], "episode_1": ["train", "index", "evaluate"]}


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, monkeypatch):
    straight = tmp_path / "straight"
    episodes.run_episodes(config(straight, tiny_t5_dir, kilt_dir, kilt_tasks))

    out = tmp_path / "interrupted"
    real_step = BiEncoder.training_step

    def crash_in_episode_1(self, batch, batch_idx):
        if self.global_step == 1 and "episode_1" in self.trainer.default_root_dir:
            raise RuntimeError("simulated crash")  # as if the job died after step 1 (its checkpoint is written)
        return real_step(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(BiEncoder, "training_step", crash_in_episode_1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            episodes.run_episodes(config(out, tiny_t5_dir, kilt_dir, kilt_tasks))
    assert json.loads((out / "episodes.json").read_text())["finished"] == {
        "episode_0": ["train", "index", "evaluate", "mine"]}
    assert final_weights(out, 1)["global_step"] == 1

    calls = count_stages(monkeypatch)
    episodes.run_episodes(config(out, tiny_t5_dir, kilt_dir, kilt_tasks))
    assert calls == {"train": [str(out / "episode_1" / "checkpoints" / "last.ckpt")], "index": [str(out / "episode_1")],
                     "evaluate": [str(out / "episode_1")], "mine": []}
    a, b = final_weights(straight, 1), final_weights(out, 1)
    assert a["global_step"] == b["global_step"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key

    # a finished run re-run does nothing; a changed setting is refused before any work
    episodes.run_episodes(config(out, tiny_t5_dir, kilt_dir, kilt_tasks))
    assert len(calls["train"]) == len(calls["index"]) == len(calls["evaluate"]) == 1
    with pytest.raises(ValueError, match=r"optimizer.lr: 0.003 -> 0.001"):
        episodes.run_episodes(config(out, tiny_t5_dir, kilt_dir, kilt_tasks, "optimizer.lr=1e-3"))
    assert len(calls["train"]) == 1


def test_more_episodes_continue_from_the_last_one(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, monkeypatch):
    out = tmp_path / "run"
    episodes.run_episodes(config(out, tiny_t5_dir, kilt_dir, kilt_tasks, "episodes.count=1"))
    assert not (out / "episode_0" / "negatives").exists()
    calls = count_stages(monkeypatch)
    results = episodes.run_episodes(config(out, tiny_t5_dir, kilt_dir, kilt_tasks, "episodes.count=2"))
    assert calls == {"train": [None], "index": [str(out / "episode_1")], "evaluate": [str(out / "episode_1")],
                     "mine": [str(out / "episode_0")]}
    assert set(results) == {"episode_0", "episode_1"}


@pytest.mark.parametrize("override,message", [
    ("ckpt_path=/some/last.ckpt", "use init_from"),
    ("episodes.mine_top_k=9", r"mine_top_k=9 must be > 0 and <= episodes.mine_depth=8"),
    ("episodes.evaluate=first", "choose one of"),
    ("retriever=bm25", "retriever='bm25': episodes train and mine with a dense model"),
])
def test_settings_that_cannot_run_are_refused(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, override, message):
    with pytest.raises(ValueError, match=message):
        episodes.run_episodes(config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, override))
    assert not (tmp_path / "episodes.json").exists()


def test_the_command_resumes_in_its_fixed_run_folder(tmp_path, tiny_t5_dir, kilt_dir, monkeypatch):
    tasks = ("data.tasks={qa: {train: qa-train.jsonl, dev: qa-dev.jsonl, prompt: QA, max_query_length: 8}, "
             "el: {train: el-train.jsonl, dev: el-dev.jsonl, prompt: EL, max_query_length: 8}}")
    args = ["episodes", "model=t5_prompted", f"model.encoder.path={tiny_t5_dir}", "logger=csv",
            "data=kilt_files", f"data.root={kilt_dir}", "data.corpus=corpus.tsv", "data.task_names=[qa,el]", tasks,
            "data.batch_size=8", "data.max_passage_length=16", "data.bm25_top_k=5", "index.batch_size=16",
            f"paths.log_dir={tmp_path}", "task_name=ance", "episodes.count=1", "trainer.max_steps=1"]
    monkeypatch.setattr(sys, "argv", ["multiret"])  # the command sets sys.argv for Hydra; restored afterwards
    assert cli(args) == 0
    run_dir = tmp_path / "ance" / "episodes"
    checkpoint = run_dir / "episode_0" / "checkpoints" / "last.ckpt"
    written = checkpoint.stat().st_mtime_ns
    assert (run_dir / "episode_0" / "eval" / "metrics.json").is_file()
    state = (run_dir / "episodes.json").read_text()
    assert cli(args) == 0
    assert checkpoint.stat().st_mtime_ns == written and (run_dir / "episodes.json").read_text() == state
    assert list((tmp_path / "ance").iterdir()) == [run_dir]  # the same folder both times, not a timestamped one


def test_other_ddp_processes_wait_for_the_first_to_record_the_stages(tmp_path):
    first = episodes.EpisodeState.open(tmp_path / "episodes.json", {"seed": 1})
    first.finish(0, "train")
    other = episodes.EpisodeState.open(tmp_path / "episodes.json", {"seed": 1})
    finisher = threading.Timer(0.2, lambda: [first.finish(0, s) for s in ("index", "evaluate", "mine")])
    finisher.start()
    began = time.perf_counter()
    other.wait_for(0, ["train", "index", "evaluate", "mine"], poll_seconds=0.02)
    assert time.perf_counter() - began >= 0.2 and other.done(0, "mine")


@pytest.mark.slow
def test_episodes_train_on_two_processes(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    results = episodes.run_episodes(config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, "trainer.devices=2",
                                           "trainer.strategy=ddp_spawn"))
    assert set(results) == {"episode_0", "episode_1"}
    assert final_weights(tmp_path, 1)["global_step"] == 2


def test_a_step_offset_continues_the_batch_stream(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    def batches(offset, count):
        cfg = tiny_config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, f"data.step_offset={offset}")
        model, datamodule = stages.build(cfg)
        datamodule.setup("fit")
        return list(itertools.islice(iter(datamodule.train_dataloader()), count))

    from_start, from_two = batches(0, 3), batches(2, 1)
    assert_same(from_start[2], from_two[0])
    with pytest.raises(AssertionError):
        assert_same(from_start[0], from_two[0])


def test_mining_keeps_the_best_non_gold_passages(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    from multiret.experiment.run import run
    from multiret.index.dense import search_tasks
    from multiret.index.faiss_index import DenseIndex

    cfg = config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[index]")
    run(cfg)
    model, datamodule = stages.build(cfg)
    datamodule.setup("evaluate")
    stages.mine(cfg, model, datamodule)

    corpus = datamodule.corpus
    index = DenseIndex.load(cfg.index.dir, corpus)
    rankings = search_tasks(model, index, datamodule.collator, datamodule.tasks, datamodule.train_queries, 8, 16)
    for task, queries in datamodule.train_queries.items():
        mined = {r["id"]: r["negatives"] for r in read_jsonl(tmp_path / "negatives" / f"{task}.jsonl")}
        for query, rows in zip(queries, rankings[task][1]):
            expected = [corpus.ids[r] for r in rows if r >= 0 and corpus.page_ids[r] not in query.gold_pages][:5]
            assert mined[query.qid] == expected


@pytest.mark.parametrize("stage", ["evaluate", "mine"])
def test_mining_searches_the_index_as_evaluation_does(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, monkeypatch, stage):
    """index.device=gpu moves the index onto the GPUs, with its placement and search parameters, for both searches."""
    from multiret.experiment.run import run
    from multiret.index.faiss_index import DenseIndex

    cfg = config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[index]")
    run(cfg)
    placed, tuned = [], []
    monkeypatch.setattr(DenseIndex, "to_gpus", lambda self, placement: placed.append(placement))  # no GPU FAISS here
    monkeypatch.setattr(DenseIndex, "set_search_parameters", lambda self, parameters: tuned.append(parameters))
    cfg.index.device, cfg.index.gpu_placement, cfg.index.search_parameters = "gpu", "sharded", "nprobe=4"
    model, datamodule = stages.build(cfg)
    datamodule.setup("evaluate")
    getattr(stages, stage)(cfg, model, datamodule)
    assert placed == ["sharded"] and tuned == ["nprobe=4"]
    cfg.index.device = "cpu"
    getattr(stages, stage)(cfg, model, datamodule)
    assert placed == ["sharded"]
