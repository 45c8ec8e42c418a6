"""The main job: train the bi-encoder, index the corpus, score every task with KILT's metrics.

``multiret train|index|evaluate`` are this one Hydra app with different ``stages``; the demo
and the tests call :func:`run` on composed configs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from multiret.atomic import atomic_write_text
from multiret.configs import CONFIG_DIR
from multiret.data.corpus import Corpus
from multiret.data.datamodule import MultitaskDataModule
from multiret.errors import UserError, hydra_task, require_writable_folder
from multiret.eval.retrieval import evaluate_task_rankings, with_average
from multiret.experiment.loggers import instantiate_named
from multiret.experiment.manifest import write_manifest
from multiret.experiment.run_folders import register_resolver
from multiret.experiment.spawned import CloseSpawnedProcessGroup
from multiret.index.bm25 import BM25Retriever
from multiret.index.dense import index_corpus, model_device, search_tasks
from multiret.index.faiss_index import (
    DEVICES,
    GPU_PLACEMENTS,
    DenseIndex,
    require_gpu_faiss,
)
from multiret.index.sharded import ShardWriter
from multiret.model.loading import load_checkpoint

log = logging.getLogger(__name__)

STAGES = ("train", "index", "evaluate")
RETRIEVERS = ("dense", "bm25")
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself

register_resolver()  # conf/hydra/default.yaml names run folders with it

# Checkpoints are meant to hold the state after the optimizer step; Lightning warns about that under manual optimisation.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def validate(cfg: DictConfig) -> None:
    """Fail before any work on settings that cannot run, naming the key and the fix."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(
            f"required setting(s) not given: {', '.join(missing)}; set them on the command line, "
            f"e.g. {missing[0]}=... (see the comments in conf/)"
        )
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise UserError(f"stages={list(cfg.stages)} has unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if cfg.retriever not in RETRIEVERS:
        raise UserError(f"retriever={cfg.retriever!r}; choose one of {list(RETRIEVERS)}")
    if cfg.retriever == "bm25" and "train" in cfg.stages:
        raise UserError("retriever=bm25 has nothing to train; use stages=[evaluate] (its index is built in memory)")
    if cfg.retriever == "dense":
        if cfg.index.device not in DEVICES:
            raise UserError(f"index.device={cfg.index.device!r}; choose one of {list(DEVICES)}")
        if cfg.index.gpu_placement not in GPU_PLACEMENTS:
            raise UserError(f"index.gpu_placement={cfg.index.gpu_placement!r}; choose one of {list(GPU_PLACEMENTS)}")
        if cfg.index.device == "gpu":
            require_gpu_faiss()
    if cfg.get("init_from") and "train" not in cfg.stages:
        raise UserError("init_from only starts training; to index or evaluate a checkpoint's weights use ckpt_path")
    if "evaluate" in cfg.stages:
        validate_cutoffs(cfg.index.top_k, cfg.index.ks)
    for key in ("ckpt_path", "init_from"):
        if cfg.get(key) and cfg[key] not in LIGHTNING_CKPT_NAMES:
            load_checkpoint(cfg[key], key, lazy=True)  # a missing, truncated or unsafe checkpoint fails before any work
    for key, folder in output_folders(cfg).items():
        require_writable_folder(folder, key)


def validate_cutoffs(top_k: Any, ks: Any) -> None:
    """``index.top_k`` passages per query and the metric cut-offs ``index.ks`` (each at most ``top_k``)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"index.top_k={top_k!r} must be a positive integer (passages retrieved per query), e.g. index.top_k=100")
    values = list(ks) if OmegaConf.is_list(ks) or isinstance(ks, (list, tuple)) else [ks]
    if not values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in values):
        raise UserError(f"index.ks={values!r} must be a non-empty list of positive integers, e.g. index.ks=[1,5,20]")
    if max(values) > top_k:
        raise UserError(
            f"index.ks={values} asks for k={max(values)} but only index.top_k={top_k} passages are retrieved; "
            f"set index.top_k={max(values)} or more, or drop that cut-off"
        )


def check_data_files(files: list[Path]) -> None:
    """Every file the data module will read exists (checked once the benchmark is built, before any reading)."""
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise UserError(f"data file(s) not found: {', '.join(missing)}; check data.root, data.corpus and data.tasks")


def output_folders(cfg: DictConfig) -> dict[str, str]:
    """The folders this job writes, by the key that sets them."""
    folders = {"paths.output_dir": cfg.paths.output_dir}
    checkpoints = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    if "train" in cfg.stages and checkpoints:
        folders["callbacks.model_checkpoint.dirpath"] = checkpoints
    if "index" in cfg.stages and cfg.retriever == "dense":
        folders["index.dir"] = cfg.index.dir
    if "evaluate" in cfg.stages:
        folders["paths.output_dir (eval/)"] = str(Path(cfg.paths.output_dir) / "eval")
    return folders


def run(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Run the configured stages; returns per-task metrics plus their average (empty if not evaluated)."""
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in config.yaml; stderr stays for errors
    out = Path(cfg.paths.output_dir)
    model = instantiate(cfg.model) if cfg.retriever == "dense" else None
    datamodule: MultitaskDataModule = instantiate(
        cfg.data,
        tokenizer=model.tokenizer if model else None,
        prompt_template=model.prompt_template if model else None,
    )
    datamodule.prepare_data()
    check_data_files(datamodule.data_files())
    record_run(out, cfg, datamodule.data_files())
    loggers = instantiate_named(cfg.logger)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # the whole config, in W&B and hparams.yaml
    step = 0
    trainer: L.Trainer | None = None
    if "train" in cfg.stages:
        callbacks = [*instantiate_named(cfg.callbacks), instantiate(cfg.method), CloseSpawnedProcessGroup()]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        if cfg.get("init_from"):
            load_weights(model, cfg.init_from, "init_from")  # weights only: the optimizer and schedule start afresh
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        step = trainer.global_step
    elif model is not None and cfg.ckpt_path:
        load_weights(model, cfg.ckpt_path)
    indexing = model is not None and "index" in cfg.stages
    if trainer is not None and trainer.global_rank > 0 and not indexing:
        return {}  # under DDP only the first process evaluates
    datamodule.setup("evaluate")
    results: dict[str, dict[str, float]] = {}
    if indexing and not build_index(cfg, model, datamodule):
        return {}  # under DDP every process encodes its shard, only the first builds the index and evaluates
    if "evaluate" in cfg.stages:
        results = with_average(evaluate(cfg, model, datamodule))
        log_results(loggers, results, cfg.data.eval_split, step)
        log.info("scores, guess and gold files: %s", Path(cfg.paths.output_dir) / "eval")
    finish_loggers(loggers)
    return results


def finish_loggers(loggers: list[Any]) -> None:
    """Flush and close every logger; W&B runs are finished since the demo and episodes start several in one process."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


@rank_zero_only
def record_run(out: Path, cfg: DictConfig, data_files: list[Path]) -> None:
    """The resolved config and the reproducibility manifest, written once (by the first process)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_manifest(out, data_files, cfg.seed, passages={
        "template": cfg.data.get("passage_template"), "layout": cfg.data.get("passage_layout")})


def build_index(cfg: DictConfig, model: Any, datamodule: MultitaskDataModule) -> bool:
    """Encode the corpus into the FAISS index; False on the processes that stop after encoding.

    Every process of ``cfg.trainer`` (several under ``trainer=ddp``, after training or with
    ``stages=[index]``) encodes a contiguous shard through ``trainer.predict``, chunk by chunk,
    keeping the chunks an interrupted run finished; the first builds the index from the shards.
    """
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[ShardWriter(), CloseSpawnedProcessGroup()], logger=False, enable_checkpointing=False)
    index = index_corpus(trainer, model, datamodule.corpus, datamodule.collator, cfg.index.dir, cfg.index.factory,
                         cfg.index.batch_size, cfg.index.train_sample, num_workers=cfg.index.num_workers)
    return index is not None


def load_index(cfg: DictConfig, corpus: Corpus) -> DenseIndex:
    """The index of ``cfg.index.dir`` for this corpus, on the GPUs when ``index.device=gpu``, with its search parameters."""
    index = DenseIndex.load(cfg.index.dir, corpus)
    if cfg.index.device == "gpu":
        index.to_gpus(cfg.index.gpu_placement)
    index.set_search_parameters(cfg.index.search_parameters)
    return index


def evaluate(cfg: DictConfig, model: Any, datamodule: MultitaskDataModule) -> dict[str, dict[str, float]]:
    """Retrieve for every evaluation query and score the pages against KILT gold."""
    queries = datamodule.eval_queries
    if cfg.retriever == "bm25":
        retriever = BM25Retriever(datamodule.corpus)
        rankings = {t: retriever.search([q.text for q in qs], cfg.index.top_k) for t, qs in queries.items()}
    else:
        model.to(model_device())
        index = load_index(cfg, datamodule.corpus)
        rankings = search_tasks(model, index, datamodule.collator, datamodule.tasks, queries, cfg.index.top_k,
                                cfg.index.batch_size)
    query_ids = {t: [q.qid for q in qs] for t, qs in queries.items()}
    out_dir = Path(cfg.paths.output_dir) / "eval"
    return evaluate_task_rankings(
        datamodule.tasks, datamodule.eval_split, query_ids, rankings, datamodule.corpus, out_dir, list(cfg.index.ks)
    )


def load_weights(model: torch.nn.Module, ckpt_path: str, key: str = "ckpt_path") -> None:
    """Load a training checkpoint's weights into a freshly built model (for index/evaluate, or ``init_from``)."""
    model.load_state_dict(load_checkpoint(ckpt_path, key, lazy=True)["state_dict"])


def log_results(loggers: list[Any], results: dict[str, dict[str, float]], split: str, step: int) -> None:
    flat = {f"{split}/{task}/{name}": value for task, metrics in results.items() for name, value in metrics.items()}
    for logger in loggers:
        logger.log_metrics(flat, step=step)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@hydra_task
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the average R-precision for sweepers to optimise."""
    results = run(cfg)
    return results.get("average", {}).get("Rprec")


if __name__ == "__main__":
    main()  # how trainer=ddp's launcher re-runs `multiret train|index|evaluate` in the other processes
