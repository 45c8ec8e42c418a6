"""`multiret episodes`: ANCE-style hard-negative episodes, resumable stage by stage.

Episode 0 trains on BM25 negatives; every later episode starts from the previous episode's
final weights (weights only: a fresh optimizer, schedule and method state) and trains on the
negatives that model mined: its best-ranked training passages not from a gold page (the
TACO reference trains 4 such episodes). Each episode lives in ``<run>/episode_<i>/``
(checkpoints, index, eval, ``negatives/<task>.jsonl``); ``<run>/episodes.json`` records the
finished stages and the resolved config, so re-running the same command skips what is done,
resumes an interrupted training from its ``last.ckpt`` and refuses a changed config.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from multiret.atomic import atomic_write_text
from multiret.configs import CONFIG_DIR
from multiret.data.datamodule import MultitaskDataModule
from multiret.errors import UserError, hydra_task
from multiret.eval.retrieval import saved_results
from multiret.experiment import stages
from multiret.experiment.loggers import instantiate_named
from multiret.experiment.run_folders import register_resolver
from multiret.experiment.validation import validate
from multiret.model.biencoder import BiEncoder

log = logging.getLogger(__name__)

STATE_FILE = "episodes.json"
RESULTS_FILE = "results.json"
# `multiret episodes` runs in a fixed folder (not a timestamped one) so that the same command resumes.
RUN_DIR_OVERRIDE = "hydra.run.dir=${paths.log_dir}/${task_name}/episodes"
# Settings that may change between runs: raising the count continues with more episodes.
MAY_CHANGE = ("episodes.count",)
EVALUATE_CHOICES = ("all", "last")
POLL_SECONDS = 10.0  # how often the other DDP processes look whether the first one has mined the next negatives

register_resolver()  # conf/hydra/default.yaml names run folders with it


def validate_episodes(cfg: DictConfig) -> None:
    """Fail before any work on episode settings that cannot run, naming the key and the fix."""
    settings = cfg.episodes
    if cfg.retriever != "dense":
        raise UserError(f"retriever={cfg.retriever!r}: episodes train and mine with a dense model; use retriever=dense")
    if cfg.ckpt_path:
        raise UserError("ckpt_path is not used by `multiret episodes` (it resumes by itself from its run folder); "
                         "use init_from=<ckpt> to start episode 0 from a checkpoint's weights")
    if not isinstance(settings.count, int) or settings.count < 1:
        raise UserError(f"episodes.count={settings.count!r} must be an integer >= 1")
    if not 0 < settings.mine_top_k <= settings.mine_depth:
        raise UserError(f"episodes.mine_top_k={settings.mine_top_k} must be > 0 and <= episodes.mine_depth={settings.mine_depth}")
    if settings.evaluate not in EVALUATE_CHOICES:
        raise UserError(f"episodes.evaluate={settings.evaluate!r}; choose one of {list(EVALUATE_CHOICES)}")
    validate(cfg)  # after the episode checks: ckpt_path's own message above is the useful one here


def episode_stages(episode: int, count: int, evaluate_which: str) -> list[str]:
    """The stages of one episode, in order; the last episode mines nothing (no episode would train on it)."""
    stages = ["train", "index"]
    if evaluate_which == "all" or episode == count - 1:
        stages.append("evaluate")
    if episode < count - 1:
        stages.append("mine")
    return stages


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}``, to name exactly which settings differ."""
    if isinstance(node, Mapping):
        items: dict[str, Any] = {}
        for key, value in node.items():
            items.update(flatten(value, f"{prefix}{key}."))
        return items if items or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


class EpisodeState:
    """``episodes.json``: the resolved config the run started with and every finished stage, rewritten atomically.

    Only the first process writes it; under DDP the other processes only read it (and wait on it).
    """

    def __init__(self, path: Path, config: dict[str, Any], run_id: str, finished: dict[str, list[str]]) -> None:
        self.path = path
        self.config = config
        self.run_id = run_id
        self.finished = finished

    @classmethod
    def open(cls, path: Path, config: dict[str, Any]) -> EpisodeState:
        """Continue the state in ``path``, refusing a config that differs from the one it was started with."""
        if not path.is_file():
            state = cls(path, config, secrets.token_hex(4), {})
            state.save()
            return state
        saved = json.loads(path.read_text())
        old, new = flatten(saved["config"]), flatten(config)
        changed = sorted(k for k in old.keys() | new.keys() if k not in MAY_CHANGE and old.get(k) != new.get(k))
        if changed:
            shown = "; ".join(f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed[:5])
            raise UserError(
                f"{path}: the config differs from the one these episodes were started with ({len(changed)} setting(s): "
                f"{shown}); restore those settings to resume, or start a new run folder (task_name=... or hydra.run.dir=...)"
            )
        return cls(path, config, saved["run_id"], saved["finished"])

    def wait_for(self, episode: int, stages: list[str], poll_seconds: float = POLL_SECONDS) -> None:
        """Block (a process other than the first, under DDP) until the first process has recorded these stages."""
        if not all(self.done(episode, s) for s in stages):
            log.info("episode %d: waiting for the first process to finish %s", episode, ", ".join(stages))
        while not all(self.done(episode, s) for s in stages):
            time.sleep(poll_seconds)
            if self.path.is_file():
                self.finished = json.loads(self.path.read_text())["finished"]

    def done(self, episode: int, stage: str) -> bool:
        return stage in self.finished.get(f"episode_{episode}", [])

    def finish(self, episode: int, stage: str) -> None:
        self.finished.setdefault(f"episode_{episode}", []).append(stage)
        self.save()

    @rank_zero_only
    def save(self) -> None:
        record = {"config": self.config, "run_id": self.run_id, "finished": self.finished}
        atomic_write_text(self.path, json.dumps(record, indent=2))


def episode_dir(out: Path, episode: int) -> Path:
    return out / f"episode_{episode}"


def episode_config(cfg: DictConfig, out: Path, episode: int, run_id: str, **settings: Any) -> DictConfig:
    """The run config of one episode: its own folder, the previous episode's weights and negatives, its W&B run."""
    episode_cfg = copy.deepcopy(cfg)
    with open_dict(episode_cfg):
        episode_cfg.paths.output_dir = str(episode_dir(out, episode))
        if episode > 0:
            previous = episode_dir(out, episode - 1)
            episode_cfg.init_from = str(previous / "checkpoints" / "last.ckpt")
            episode_cfg.data.negatives_dir = str(previous / "negatives")
            episode_cfg.data.step_offset = cfg.data.step_offset + episode * cfg.trainer.max_steps  # the next batches, not a replay
        episode_cfg.tags = [*cfg.tags, f"episode{episode}"]
        wandb = episode_cfg.logger.get("wandb") if episode_cfg.logger else None
        if isinstance(wandb, DictConfig) and "_target_" in wandb:
            wandb.name = wandb.get("name") or f"{cfg.task_name}-episode{episode}"
            wandb.id = f"{run_id}-episode{episode}"  # training and evaluation (and a resumed run) log to one W&B run
        for key, value in settings.items():
            episode_cfg[key] = value
    return episode_cfg


def train_stage(cfg: DictConfig) -> None:
    """Train one episode as `multiret train` does: config, manifest, loggers and checkpoints in the episode's folder."""
    validate(cfg)
    model, datamodule = stages.build(cfg)
    loggers = stages.open_run(cfg, datamodule)
    stages.train(cfg, model, datamodule, loggers)
    stages.finish_loggers(loggers)


def load_trained(cfg: DictConfig) -> tuple[BiEncoder, MultitaskDataModule]:
    """An episode's final model and its data, built once for the stages after training."""
    model, datamodule = stages.build(cfg)
    stages.load_weights(model, str(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"))
    datamodule.setup("evaluate")
    return model, datamodule


def evaluate_stage(cfg: DictConfig, model: BiEncoder, datamodule: MultitaskDataModule) -> None:
    """Score the eval split (``<episode>/eval/``) and log it to the episode's loggers at its last training step."""
    loggers = instantiate_named(cfg.logger)
    stages.evaluate(cfg, model, datamodule, loggers, cfg.trainer.max_steps)
    stages.finish_loggers(loggers)


AFTER_TRAINING = {"index": stages.index, "evaluate": evaluate_stage, "mine": stages.mine}


def run_episodes(cfg: DictConfig) -> dict[str, dict[str, dict[str, float]]]:
    """Run (or resume) every episode; returns the eval metrics of each evaluated episode, by episode folder name."""
    validate_episodes(cfg)
    out = Path(cfg.paths.output_dir)
    state = EpisodeState.open(out / STATE_FILE, OmegaConf.to_container(cfg, resolve=True))
    count = cfg.episodes.count
    for episode in range(count):
        planned = episode_stages(episode, count, cfg.episodes.evaluate)
        if not state.done(episode, "train"):
            last = episode_dir(out, episode) / "checkpoints" / "last.ckpt"
            resume = str(last) if last.is_file() else None
            log.info("episode %d: training%s", episode, f" (resuming from {resume})" if resume else "")
            train_stage(episode_config(cfg, out, episode, state.run_id, stages=["train"], ckpt_path=resume))
            state.finish(episode, "train")
        if rank_zero_only.rank > 0:
            if not state.done(episode, "index"):
                episode_cfg = episode_config(cfg, out, episode, state.run_id)
                stages.index(episode_cfg, *load_trained(episode_cfg))
            state.wait_for(episode, planned)  # under DDP every process encodes its shard; the first evaluates and mines
            continue
        pending = [s for s in planned if not state.done(episode, s)]
        if not pending:
            log.info("episode %d: done (%s)", episode, ", ".join(planned))
            continue
        episode_cfg = episode_config(cfg, out, episode, state.run_id)
        model, datamodule = load_trained(episode_cfg)
        for stage in pending:
            log.info("episode %d: %s", episode, stage)
            AFTER_TRAINING[stage](episode_cfg, model, datamodule)
            state.finish(episode, stage)
    return collect_results(out, count) if rank_zero_only.rank == 0 else {}


def collect_results(out: Path, count: int) -> dict[str, dict[str, dict[str, float]]]:
    """Every evaluated episode's metrics (with their average) in one file, ``<run>/results.json``, and the log."""
    results = {}
    for episode in range(count):
        scores = saved_results(episode_dir(out, episode) / "eval")
        if scores is not None:
            results[f"episode_{episode}"] = scores
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2))
    for name, metrics in results.items():
        log.info("%s: average %s", name, ", ".join(f"{k} {v:.3f}" for k, v in metrics["average"].items()))
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="episodes")
@hydra_task
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the last episode's average R-precision for sweepers to optimise."""
    results = run_episodes(cfg)
    last = results.get(f"episode_{cfg.episodes.count - 1}", {})
    return last.get("average", {}).get("Rprec")


if __name__ == "__main__":
    main()  # how trainer=ddp's launcher re-runs `multiret episodes` in the other processes
