"""Settings checked before any work, so that a run fails in its first second with the key to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from multiret.errors import UserError, require_writable_folder
from multiret.eval.dev_validation import check_interval
from multiret.index.encoding_settings import PRECISIONS
from multiret.index.faiss_index import DEVICES, GPU_PLACEMENTS, require_gpu_faiss
from multiret.model.loading import load_checkpoint

STAGES = ("train", "index", "evaluate")
RETRIEVERS = ("dense", "bm25")
EVAL_CHECKPOINTS = ("best", "last")  # which weights index and evaluate use after training
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself


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
        if cfg.index.precision not in PRECISIONS:
            raise UserError(f"index.precision={cfg.index.precision!r}; choose one of {list(PRECISIONS)}")
    if cfg.get("eval_checkpoint", "last") not in EVAL_CHECKPOINTS:
        raise UserError(f"eval_checkpoint={cfg.eval_checkpoint!r}; choose one of {list(EVAL_CHECKPOINTS)}")
    if "train" in cfg.stages:
        validate_training_numbers(cfg)
        if cfg.get("callbacks", {}).get("dev_validation"):
            check_interval(cfg.trainer.get("val_check_interval"))  # before the data is read and mined
            check_selection_split(cfg)
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


def check_selection_split(cfg: DictConfig) -> None:
    """Validation scores ``data.validation_split`` (by default ``data.eval_split``): off the dev split,
    ``eval_checkpoint=best`` would pick the weights on held-out queries that are not for choosing (the test
    split's), so it is refused."""
    key = "data.validation_split" if OmegaConf.select(cfg, "data.validation_split") else "data.eval_split"
    split = OmegaConf.select(cfg, key, default="dev")
    if split != "dev" and cfg.get("eval_checkpoint", "last") == "best":
        raise UserError(f"validation while training scores {key}={split}, so eval_checkpoint=best would choose "
                        f"the weights on {split} queries; validate on dev (data.validation_split=dev), set eval_checkpoint=last, "
                        "or train with callbacks.dev_validation=null")


def validate_training_numbers(cfg: DictConfig) -> None:
    """A learning rate and a negatives count that torch or NumPy would only reject after the data set-up."""
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0):
        raise UserError(f"optimizer.lr={lr!r} must be a positive number, e.g. optimizer.lr=1e-5")
    negatives = OmegaConf.select(cfg, "data.n_negatives")
    if negatives is not None and (isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0):
        raise UserError(f"data.n_negatives={negatives!r} must be a whole number of hard negatives per query, 0 or more, "
                        "e.g. data.n_negatives=2")


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
