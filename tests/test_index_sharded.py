"""Sharded corpus encoding: contiguous shards, 2 gloo processes equal 1, complete shards kept;
index.device=gpu without GPU FAISS fails at validation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from multiret.data.corpus import read_corpus
from multiret.experiment.run import run, validate
from multiret.index.encoding_settings import VECTOR_ATTRIBUTES, EncodingSettings
from multiret.index.faiss_index import DenseIndex
from multiret.index.shard_files import shard_bounds, shard_paths
from multiret.index.sharded import ShardWriter, encode_shards

from helpers import tiny_config


def test_shards_are_contiguous_and_cover_every_row_once():
    assert [shard_bounds(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_bounds(80, 2, r) for r in range(2)] == [(0, 40), (40, 80)]
    assert [shard_bounds(3, 3, r) for r in range(3)] == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="2 passages, fewer than the 3 processes; index it with one process"):
        shard_bounds(2, 3, 0)


def test_index_from_row_blocks_equals_index_from_one_array():
    data = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    queries = data[:5] + 0.1
    one = DenseIndex.build(data, "corpus", "IVF4,Flat", train_sample=100)
    blocks = DenseIndex.build([data[:150], data[150:290], data[290:]], "corpus", "IVF4,Flat", train_sample=100)
    one.set_search_parameters("nprobe=2")
    blocks.set_search_parameters("nprobe=2")
    assert one.index.ntotal == blocks.index.ntotal == 300
    assert one.search(queries, 10)[1].tolist() == blocks.search(queries, 10)[1].tolist()


@pytest.fixture()
def odd_kilt_dir(tmp_path, kilt_dir):
    """The kilt_dir fixture with 79 passages (the last one dropped), not divisible by 2 processes."""
    out = tmp_path / "kilt-odd"
    shutil.copytree(kilt_dir, out)
    lines = (out / "corpus.tsv").read_text().splitlines()
    (out / "corpus.tsv").write_text("\n".join(lines[:-1]) + "\n")
    return out


DDP = ("trainer.devices=2", "trainer.strategy=ddp_spawn")


def test_two_processes_encode_shards_that_equal_one_process(tmp_path, tiny_t5_dir, odd_kilt_dir, kilt_tasks):
    corpus = read_corpus(odd_kilt_dir / "corpus.tsv")
    assert len(corpus) == 79
    stages = "stages=[index,evaluate]"
    one = run(tiny_config(tmp_path / "one", tiny_t5_dir, odd_kilt_dir, kilt_tasks, stages))
    tokens = tmp_path / "tokens"
    two = run(tiny_config(tmp_path / "two", tiny_t5_dir, odd_kilt_dir, kilt_tasks, stages, *DDP, f"index.tokens_dir={tokens}"))
    assert len(list(tokens.rglob("*.npy"))) == 2  # each process kept its shard's token ids
    index_dir = tmp_path / "two" / "index"
    shards = [np.load(shard_paths(index_dir, r, 2)[0]) for r in range(2)]
    assert [len(s) for s in shards] == [40, 39]
    expected = np.load(shard_paths(tmp_path / "one" / "index", 0, 1)[0])
    np.testing.assert_allclose(np.concatenate(shards), expected, rtol=0, atol=1e-6)
    assert DenseIndex.load(index_dir, corpus).size == faiss.read_index(str(index_dir / "index.faiss")).ntotal == 79
    assert two.keys() == one.keys()
    for task, metrics in one.items():
        assert two[task] == pytest.approx(metrics)


def test_two_processes_re_encode_only_the_incomplete_shard(tmp_path, tiny_t5_dir, odd_kilt_dir, kilt_tasks):
    run(tiny_config(tmp_path, tiny_t5_dir, odd_kilt_dir, kilt_tasks, "stages=[index]", *DDP))
    index_dir = tmp_path / "index"
    (kept, _), (redo, redo_json) = shard_paths(index_dir, 0, 2), shard_paths(index_dir, 1, 2)
    kept_mtime, before = kept.stat().st_mtime_ns, np.load(redo)
    redo_json.unlink()  # as if process 1 had stopped before finishing (the description is written last)
    run(tiny_config(tmp_path, tiny_t5_dir, odd_kilt_dir, kilt_tasks, "stages=[index]", *DDP))
    assert kept.stat().st_mtime_ns == kept_mtime and redo_json.is_file()  # process 0 had nothing to do
    np.testing.assert_allclose(np.load(redo), before, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_index_after_ddp_training_equals_one_process_index_of_its_checkpoint(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    run(tiny_config(tmp_path / "ddp", tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[train,index]", "trainer.max_steps=2", *DDP))
    ckpt = tmp_path / "ddp" / "checkpoints" / "last.ckpt"
    run(tiny_config(tmp_path / "one", tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[index]", f"ckpt_path={ckpt}"))
    shards = [np.load(shard_paths(tmp_path / "ddp" / "index", r, 2)[0]) for r in range(2)]
    expected = np.load(shard_paths(tmp_path / "one" / "index", 0, 1)[0])
    np.testing.assert_allclose(np.concatenate(shards), expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_multiret_index_with_ddp_subprocesses_equals_one_process(tmp_path, tiny_t5_dir, odd_kilt_dir, kilt_tasks):
    """The real `trainer=ddp` launch: Lightning re-runs the command line for process 1 (CPU, gloo)."""
    script = Path(sys.executable).with_name("multiret")
    if not script.is_file():
        pytest.skip("the multiret console script is not installed next to this Python")
    tasks = ", ".join(f"{name}: {{{', '.join(f'{k}: {v}' for k, v in spec.items())}}}" for name, spec in kilt_tasks.items())
    common = ["model=t5_prompted", f"model.encoder.path={tiny_t5_dir}", "logger=csv", "data=kilt_files",
              f"data.root={odd_kilt_dir}", "data.corpus=corpus.tsv", "data.task_names=[qa,el]", f"data.tasks={{{tasks}}}",
              "data.max_passage_length=16", "index.batch_size=16"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for name, extra in (("one", []), ("two", ["trainer.devices=2", "trainer.strategy=ddp"])):
        subprocess.run([str(script), "index", *common, f"paths.output_dir={tmp_path / name}", *extra],
                       check=True, env=env, cwd=tmp_path, timeout=600)
    shards = [np.load(shard_paths(tmp_path / "two" / "index", r, 2)[0]) for r in range(2)]
    expected = np.load(shard_paths(tmp_path / "one" / "index", 0, 1)[0])
    np.testing.assert_allclose(np.concatenate(shards), expected, rtol=0, atol=1e-6)
    meta = [json.loads((tmp_path / name / "index" / "index.json").read_text()) for name in ("one", "two")]
    assert meta[0] == meta[1]


@pytest.fixture()
def tiny_model_and_data(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    cfg = tiny_config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, "stages=[index]")
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)
    datamodule.setup("evaluate")
    return model, datamodule


def encode_in_process(model, datamodule, directory, precision="float32", **trainer_options) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[ShardWriter()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, **trainer_options)
    encode_shards(trainer, model, datamodule.corpus, datamodule.collator, directory, EncodingSettings(precision, batch_size=16))
    return trainer


def test_encoding_leaves_no_row_of_the_corpus_recorded_by_lightning(tmp_path, tiny_model_and_data):
    """Lightning's predict loop records every batch's rows from a DataLoader's batch sampler (a Python int per
    passage, 1.5 GB at KILT's 36M); the corpus encoder's batches must reach the model without that record."""
    model, datamodule = tiny_model_and_data
    trainer = encode_in_process(model, datamodule, tmp_path)
    loaders = trainer.predict_dataloaders
    recorded = getattr(getattr(loaders, "batch_sampler", None), "seen_batch_indices", [])
    assert sum(len(rows) for rows in recorded) == 0
    assert np.load(shard_paths(tmp_path, 0, 1)[0]).shape[0] == 80  # and every passage was encoded


def test_complete_shard_is_kept_and_other_weights_are_encoded_again(tmp_path, tiny_model_and_data):
    model, datamodule = tiny_model_and_data
    encode_in_process(model, datamodule, tmp_path)
    array_path, json_path = shard_paths(tmp_path, 0, 1)
    first, mtime = np.load(array_path), array_path.stat().st_mtime_ns
    assert first.shape[0] == len(datamodule.corpus) == 80
    encode_in_process(model, datamodule, tmp_path)
    assert array_path.stat().st_mtime_ns == mtime  # complete: not encoded again
    with torch.no_grad():
        next(model.passage_encoder.parameters()).add_(0.5)
    encode_in_process(model, datamodule, tmp_path)
    assert not np.allclose(np.load(array_path), first)  # new weights: a new shard
    assert json.loads(json_path.read_text())["stop"] == 80


def test_bfloat16_encoding_is_a_new_shard_close_to_float32_and_stored_as_float32(tmp_path, tiny_model_and_data):
    model, datamodule = tiny_model_and_data
    encode_in_process(model, datamodule, tmp_path)
    array_path, _ = shard_paths(tmp_path, 0, 1)
    exact = np.load(array_path)
    encode_in_process(model, datamodule, tmp_path, precision="bfloat16")  # another encoding key: not the float32 shard
    approx = np.load(array_path)
    assert approx.dtype == np.float32 and not np.array_equal(approx, exact)
    cosine = (approx * exact).sum(1) / np.linalg.norm(approx, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() > 0.99  # bfloat16 keeps ~3 significant digits per product; the direction barely moves


def encode_with(tmp_path, tiny_bert_dir, kilt_dir, kilt_tasks, *overrides: str) -> dict:
    """Build the tiny BERT and the data from the config with ``overrides``, encode into one folder; the shard's description."""
    cfg = tiny_config(tmp_path / "run", tiny_bert_dir, kilt_dir, kilt_tasks, "prompt=none", *overrides, model="minilm")
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)
    datamodule.setup("evaluate")
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[ShardWriter()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    encode_shards(trainer, model, datamodule.corpus, datamodule.collator, tmp_path / "index",
                  EncodingSettings.from_config(cfg.index))
    array_path, json_path = shard_paths(tmp_path / "index", 0, 1)
    return {**json.loads(json_path.read_text()), "mtime": array_path.stat().st_mtime_ns}


@pytest.mark.parametrize(("override", "encoded_again"), [
    ("model.encoder.pooling=first", True),
    ("model.encoder.normalize=false", True),
    ("data.max_passage_length=12", True),
    ("index.precision=bfloat16", True),
    ("data.passage_template='{title}: {text}'", True),
    ("prompt=text", False),  # a query prompt never reaches a passage
    ("index.batch_size=8", False),  # only how fast
])
def test_a_rerun_reencodes_exactly_when_a_setting_that_changes_a_passage_vector_changed(
        tmp_path, tiny_bert_dir, kilt_dir, kilt_tasks, override, encoded_again):
    before = encode_with(tmp_path, tiny_bert_dir, kilt_dir, kilt_tasks)
    after = encode_with(tmp_path, tiny_bert_dir, kilt_dir, kilt_tasks, override)
    assert (after["mtime"] != before["mtime"]) is encoded_again
    assert (after != before) is encoded_again


def test_the_signature_covers_the_tokenizer_and_every_plain_setting_of_the_encoder(tiny_model_and_data):
    model, datamodule = tiny_model_and_data
    settings = EncodingSettings()
    signed = settings.signature(model, datamodule.collator)
    datamodule.collator.tokenizer.padding_side = "left"
    assert settings.signature(model, datamodule.collator) != signed
    # a new plain attribute of the encoder may change vectors: it must be signed (or be the model's location)
    plain = {name for name, value in vars(model.passage_encoder).items()
             if not name.startswith("_") and isinstance(value, str | int | float | bool) and name != "training"}
    assert plain == {*VECTOR_ATTRIBUTES, "path"}


def test_a_shard_cut_short_is_never_marked_complete(tmp_path, tiny_model_and_data):
    model, datamodule = tiny_model_and_data
    with pytest.raises(RuntimeError, match="32 of the shard's 80 passages were encoded; unset trainer.limit_predict_batches"):
        encode_in_process(model, datamodule, tmp_path, limit_predict_batches=2)
    assert not shard_paths(tmp_path, 0, 1)[1].exists()


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources"), reason="FAISS here has GPU support")
def test_gpu_index_without_gpu_faiss_fails_at_validation_with_the_fix(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    cfg = tiny_config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, "index.device=gpu")
    expected = r'installed FAISS is CPU-only; pip uninstall faiss-cpu && pip install "multiret\[gpu\]", or set index.device=cpu'
    with pytest.raises(RuntimeError, match=expected):
        validate(cfg)
    with pytest.raises(ValueError, match=r"index.gpu_placement='split'; choose one of \['replicated', 'sharded'\]"):
        validate(tiny_config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, "index.gpu_placement=split"))
    with pytest.raises(ValueError, match=r"index.precision='fp16'; choose one of \['float32', 'bfloat16'\]"):
        validate(tiny_config(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, "index.precision=fp16"))
