"""The main job: train the bi-encoder, index the corpus, score every task with KILT's metrics.

``multiret train|index|evaluate`` are this one Hydra app with different ``stages``; the demo
and the tests call :func:`run` on composed configs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from multiret.configs import CONFIG_DIR
from multiret.errors import UserError, hydra_task
from multiret.experiment import stages
from multiret.experiment.resume import finished_results
from multiret.experiment.run_folders import register_resolver
from multiret.experiment.validation import validate
from multiret.experiment.wall_clock import WallClock

log = logging.getLogger(__name__)

register_resolver()  # conf/hydra/default.yaml names run folders with it


def run(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Run the configured stages; returns per-task metrics plus their average (empty if not evaluated)."""
    validate(cfg)
    finished = finished_results(cfg)
    if finished is not None:
        log.info("%s already holds this run's scores (resume=true): nothing to do", cfg.paths.output_dir)
        return finished
    clock = WallClock()
    model, datamodule = stages.build(cfg)
    loggers = stages.open_run(cfg, datamodule)
    step = 0
    trainer = None
    if "train" in cfg.stages:
        with clock.stage("train"):
            trainer = stages.train(cfg, model, datamodule, loggers)
        step = trainer.global_step
        if model is not None:
            stages.choose_weights(cfg, model, trainer)
    elif model is not None and cfg.ckpt_path:
        stages.load_weights(model, cfg.ckpt_path)
    indexing = model is not None and "index" in cfg.stages
    if trainer is not None and trainer.global_rank > 0 and not indexing:
        return {}  # under DDP only the first process evaluates
    datamodule.setup("evaluate")
    results: dict[str, dict[str, float]] = {}
    if indexing:
        with clock.stage("index"):
            built = stages.index(cfg, model, datamodule)
        if not built:
            return {}  # under DDP every process encodes its shard, only the first builds the index and evaluates
    if "evaluate" in cfg.stages:
        with clock.stage("evaluate"):
            results = stages.evaluate(cfg, model, datamodule, loggers, step)
    clock.write(Path(cfg.paths.output_dir))
    stages.finish_loggers(loggers)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@hydra_task
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the average of ``optimized_metric`` for sweepers to optimise."""
    return objective(run(cfg), cfg.get("optimized_metric", "Rprec"))


def objective(results: dict[str, dict[str, float]], metric: str) -> float | None:
    """The average of ``metric`` over the evaluated tasks (None where nothing was evaluated); a metric the run did not
    compute is one clear error, not a silent None that a sweeper would rank."""
    if not results:
        return None
    average = results.get("average", {})
    if metric not in average:
        raise UserError(f"optimized_metric={metric} is not among this run's averaged metrics ({', '.join(average)}); "
                        "KILT and vital tasks report Rprec, BEIR and MS MARCO datasets ndcg@10")
    return average[metric]


if __name__ == "__main__":
    main()  # how trainer=ddp's launcher re-runs `multiret train|index|evaluate` in the other processes
