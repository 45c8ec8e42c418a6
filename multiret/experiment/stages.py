"""The stages of every job: build the model and data, train, index, evaluate, mine.

Each stage takes the run's config and the model and data module :func:`build` made once, so
``multiret train|index|evaluate``, ``multiret episodes``, the demo and the analyses run the
same code (two copies had drifted: mining once searched a CPU index under ``index.device=gpu``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from multiret.atomic import atomic_write_text
from multiret.data.corpus import Corpus, Passages
from multiret.data.datamodule import MultitaskDataModule
from multiret.data.tasks import TaskSpec
from multiret.eval.dev_validation import DevValidation
from multiret.eval.ir_metrics import evaluate_task_runs, ranking_run
from multiret.eval.retrieval import evaluate_task_rankings, with_average
from multiret.experiment.checkpoint import best_checkpoint
from multiret.experiment.loggers import instantiate_named
from multiret.experiment.manifest import add_to_manifest, write_manifest
from multiret.experiment.resume import resume_checkpoint
from multiret.experiment.spawned import CloseSpawnedProcessGroup
from multiret.experiment.validation import check_data_files
from multiret.index.bm25 import BM25Retriever
from multiret.index.dense import index_corpus, model_device, search_tasks
from multiret.index.encoding_settings import EncodingSettings
from multiret.index.faiss_index import DenseIndex
from multiret.index.mining import mine_negatives
from multiret.index.sharded import ShardWriter
from multiret.model.biencoder import BiEncoder
from multiret.model.loading import CheckpointError, load_checkpoint

log = logging.getLogger(__name__)

# Checkpoints are meant to hold the state after the optimizer step; Lightning warns about that under manual optimisation.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def build(cfg: DictConfig) -> tuple[BiEncoder | None, MultitaskDataModule]:
    """Seed, then the model (none for BM25) and the data module with its tokenizer and prompts, its files checked.

    Seeding first makes the model's initial weights and the data order follow ``cfg.seed``.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in config.yaml; stderr stays for errors
    model = instantiate(cfg.model) if cfg.retriever == "dense" else None
    datamodule: MultitaskDataModule = instantiate(
        cfg.data,
        tokenizer=model.tokenizer if model else None,
        prompt_template=model.prompt_template if model else None,
    )
    datamodule.prepare_data()
    check_data_files(datamodule.data_files())
    return model, datamodule


def open_run(cfg: DictConfig, datamodule: MultitaskDataModule) -> list[Any]:
    """Record the resolved config and the manifest in ``paths.output_dir``; the loggers, each given the whole config."""
    _record_run(Path(cfg.paths.output_dir), cfg, datamodule.data_files())
    loggers = instantiate_named(cfg.logger)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the whole config, in W&B and hparams.yaml
    return loggers


def train(cfg: DictConfig, model: BiEncoder, datamodule: MultitaskDataModule, loggers: Sequence[Any]) -> L.Trainer:
    """Fit with the configured gradient method; ``init_from`` starts from a checkpoint's weights, ``ckpt_path`` (or
    ``resume=true`` in a folder with a ``last.ckpt``) resumes."""
    callbacks = [*instantiate_named(cfg.callbacks), instantiate(cfg.method), CloseSpawnedProcessGroup()]
    for callback in callbacks:
        if isinstance(callback, DevValidation):
            _record(Path(cfg.paths.output_dir), validation=callback.prepare(datamodule))  # the pool, before any step
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=list(loggers) or False)
    if cfg.get("init_from"):
        load_weights(model, cfg.init_from, "init_from")  # weights only: the optimizer and schedule start afresh
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg), weights_only=True)  # as SafeCheckpointIO loads
    return trainer


def choose_weights(cfg: DictConfig, model: BiEncoder, trainer: L.Trainer) -> dict[str, Any]:
    """After training: with ``eval_checkpoint=best`` and a ``best.ckpt`` from validation, load its weights for index and
    evaluate; else keep the final ones. The choice is printed and recorded in the manifest."""
    best = best_checkpoint(trainer)
    if cfg.eval_checkpoint == "best" and best is not None:
        state = load_checkpoint(best.best_model_path, "best checkpoint", lazy=True)
        model.load_state_dict(state["state_dict"])
        chosen = {"checkpoint": "best", "path": best.best_model_path, "step": int(state["global_step"]),
                  "monitor": best.monitor, "score": float(best.best_model_score)}
    else:
        chosen = {"checkpoint": "last", "step": trainer.global_step}
    log.info("index and evaluate use the %s weights: %s", chosen["checkpoint"], chosen)
    _record(Path(cfg.paths.output_dir), evaluated_weights=chosen)
    return chosen


def index(cfg: DictConfig, model: BiEncoder, datamodule: MultitaskDataModule) -> bool:
    """Encode the corpus into the FAISS index of ``index.dir``; False on the processes that stop after encoding.

    Every process of ``cfg.trainer`` (several under ``trainer=ddp``) encodes a contiguous shard
    through ``trainer.predict``, chunk by chunk, keeping the chunks an interrupted run finished;
    the first builds the index from the shards.
    """
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[ShardWriter(), CloseSpawnedProcessGroup()], logger=False,
                                     enable_checkpointing=False)
    built = None
    for corpus, _, directory in corpora(cfg, datamodule):
        if built is not None:  # a fresh trainer per corpus: each predict run writes its own shards
            trainer = instantiate(cfg.trainer, callbacks=[ShardWriter(), CloseSpawnedProcessGroup()], logger=False,
                                  enable_checkpointing=False)
        built = index_corpus(trainer, model, corpus, datamodule.collator, directory, EncodingSettings.from_config(cfg.index),
                             cfg.index.factory, cfg.index.train_sample)
    return built is not None


def corpora(cfg: DictConfig, datamodule: MultitaskDataModule) -> list[tuple[Passages, list[TaskSpec], Path]]:
    """Each corpus to index and search, with its tasks and its index folder: ``index.dir`` for the shared corpus,
    ``index.dir/<task>`` for a task's own (BEIR datasets)."""
    specs = {task.name: task for task in datamodule.tasks}
    return [(corpus, [specs[name] for name in names],
             Path(cfg.index.dir) / names[0] if names[0] in datamodule.task_corpora else Path(cfg.index.dir))
            for corpus, names in datamodule.corpus_groups(list(specs))]


def evaluate(cfg: DictConfig, model: BiEncoder | None, datamodule: MultitaskDataModule, loggers: Sequence[Any] = (),
             step: int = 0) -> dict[str, dict[str, float]]:
    """Retrieve for every eval query and score into ``<output_dir>/eval/``, log the scores at ``step``: pages against
    KILT gold, or, for tasks with graded judgements (``datamodule.qrels``), documents with IR measures and a TREC run file.

    Returns the per-task metrics and their average.
    """
    queries = datamodule.eval_queries
    scored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for corpus, tasks, directory in corpora(cfg, datamodule):
        if cfg.retriever == "bm25":
            retriever = BM25Retriever(corpus)
            scored.update({t.name: retriever.search_scored([q.text for q in queries[t.name]], cfg.index.top_k) for t in tasks})
        else:
            model.to(model_device())
            scored.update(search_tasks(model, load_index(cfg, corpus, directory), datamodule.collator, tasks, queries,
                                       cfg.index.top_k, cfg.index.batch_size))
    query_ids = {t: [q.qid for q in qs] for t, qs in queries.items()}
    out_dir = Path(cfg.paths.output_dir) / "eval"
    if datamodule.qrels:
        runs = {t.name: ranking_run(query_ids[t.name], *scored[t.name], datamodule.corpus_of(t.name)) for t in datamodule.tasks}
        results = with_average(evaluate_task_runs(runs, datamodule.qrels, out_dir, f"multiret-{cfg.retriever}"))
    else:
        rankings = {task: rows for task, (_, rows) in scored.items()}
        results = with_average(evaluate_task_rankings(
            datamodule.tasks, datamodule.eval_split, query_ids, rankings, datamodule.corpus, out_dir, list(cfg.index.ks)
        ))
    log_results(loggers, results, datamodule.eval_split, step)
    log.info("scores with their guess and gold (or run) files: %s", out_dir)
    return results


def mine(cfg: DictConfig, model: BiEncoder, datamodule: MultitaskDataModule) -> list[Path]:
    """Hard negatives for every training query into ``<output_dir>/negatives/``, searched as :func:`evaluate` searches."""
    model.to(model_device())
    return [path for corpus, tasks, directory in corpora(cfg, datamodule)
            for path in mine_negatives(model, load_index(cfg, corpus, directory), corpus, datamodule.collator, tasks,
                                       {t.name: datamodule.train_queries[t.name] for t in tasks},
                                       Path(cfg.paths.output_dir) / "negatives", cfg.episodes.mine_depth,
                                       cfg.episodes.mine_top_k, cfg.index.batch_size)]


def load_index(cfg: DictConfig, corpus: Corpus, directory: str | Path | None = None, mmap: bool = False) -> DenseIndex:
    """The index of ``directory`` (default ``index.dir``) for this corpus, placed and tuned as ``index.device``,
    ``gpu_placement``, ``search_parameters`` say.

    ``mmap`` maps the index file rather than reading it (``multiret search``: the first answer comes before the whole index is read).
    """
    loaded = DenseIndex.load(cfg.index.dir if directory is None else directory, corpus, mmap=mmap)
    if cfg.index.device == "gpu":
        loaded.to_gpus(cfg.index.gpu_placement)
    loaded.set_search_parameters(cfg.index.search_parameters)
    return loaded


def load_weights(model: torch.nn.Module, ckpt_path: str, key: str = "ckpt_path") -> None:
    """Load a training checkpoint's weights into a freshly built model (for index/evaluate, or ``init_from``).

    A checkpoint of another model shape (another encoder, pooling head, prompt kind) is refused in one line.
    """
    state = load_checkpoint(ckpt_path, key, lazy=True)["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise CheckpointError(f"{key}={str(ckpt_path)!r} holds a model of another shape than the configured one ({first}); "
                              "use a checkpoint of a run with this model config") from error


def log_results(loggers: Sequence[Any], results: dict[str, dict[str, float]], split: str, step: int) -> None:
    """Metrics as ``<split>/<task>/<metric>``, the keys ``multiret compare`` reads back."""
    flat = {f"{split}/{task}/{name}": value for task, metrics in results.items() for name, value in metrics.items()}
    for logger in loggers:
        logger.log_metrics(flat, step=step)


def finish_loggers(loggers: Sequence[Any]) -> None:
    """Flush and close every logger; W&B runs are finished since the demo and episodes start several in one process."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


@rank_zero_only
def _record(out: Path, **fields: Any) -> None:
    add_to_manifest(out, **fields)


@rank_zero_only
def _record_run(out: Path, cfg: DictConfig, data_files: list[Path]) -> None:
    """The resolved config and the reproducibility manifest, written once (by the first process)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_manifest(out, data_files, cfg.seed, passages={
        "template": cfg.data.get("passage_template"), "layout": cfg.data.get("passage_layout")})
