"""`multiret demo`: BM25, zero-shot, naive and TACO (and task-specific) on the vital benchmark, one table."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from multiret.atomic import atomic_write_text
from multiret.configs import CONFIG_DIR
from multiret.eval.curves import run_curve
from multiret.experiment.run import run
from multiret.prepare.vital import vital_task_names

log = logging.getLogger(__name__)

COLUMNS = (("BM25", "vital_bm25"), ("zero-shot", "vital_zeroshot"), ("naive", "vital_naive"), ("TACO", "vital_taco"))
TASK_SPECIFIC = "task-specific"
# the vital study's step budget, its pilot's learning rate and its corpus encoding (docs/study.md); a validation pool
# sized for 50 steps (20 dev queries and 40 random passages per task), so that its two validations stay a small share
DEMO_OVERRIDES = ("trainer.max_steps=50", "optimizer.lr=2e-4", "index.precision=bfloat16",
                  "callbacks.dev_validation.max_queries=20", "callbacks.dev_validation.pool_sample=40")
FULL_OVERRIDES = ("data.corpus_max_pages=null",)
SHOWN = ("Rprec", "recall@5")


def compose_run(experiment: str, output_dir: Path, group: str, overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[f"experiment={experiment}", f"paths.output_dir={output_dir}", f"group={group}", *overrides],
        )


def task_specific_scores(out: Path, group: str, overrides: Sequence[str]) -> dict[str, dict[str, float]]:
    """One naive model per task with the same number of steps; each scored on its own task."""
    scores: dict[str, dict[str, float]] = {}
    for task in vital_task_names():
        cfg = compose_run(
            "vital_task_specific", out / "task-specific" / task, group, [f"data.task_names=[{task}]", *overrides]
        )
        scores[task] = run(cfg)[task]
    keys = next(iter(scores.values())).keys()
    scores["average"] = {k: sum(s[k] for s in scores.values()) / len(vital_task_names()) for k in keys}
    return scores


def results_table(results: dict[str, dict[str, dict[str, float]]]) -> Table:
    table = Table(title="vital dev: page-level R-precision / recall@5 (KILT metrics)")
    table.add_column("task")
    for column in results:
        table.add_column(column, justify="right")
    for task in (*vital_task_names(), "average"):
        cells = [" / ".join(f"{results[c][task][m]:.3f}" for m in SHOWN) for c in results]
        table.add_row(task, *cells, style="bold" if task == "average" else None)
    return table


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| task | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for task in (*vital_task_names(), "average"):
        lines.append(f"| {task} | " + " | ".join(" / ".join(f"{results[c][task][m]:.3f}" for m in SHOWN) for c in results) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiret demo", description=__doc__)
    parser.add_argument("--full", action="store_true", help="add task-specific models and search the full 10,033-page corpus")
    parser.add_argument("--out", type=Path, default=None, help="demo folder (default logs/demo/<time>)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run, e.g. trainer.max_steps=50")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = (args.out or Path("logs") / "demo" / stamp).resolve()
    group = f"demo-{stamp}"
    overrides = [*DEMO_OVERRIDES, *(FULL_OVERRIDES if args.full else ()), *args.overrides]
    console = Console()
    results: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for column, experiment in COLUMNS:
        console.rule(f"[bold]{column}")
        began = time.perf_counter()
        results[column] = run(compose_run(experiment, out / experiment, group, overrides))
        seconds[column] = time.perf_counter() - began
        curve = run_curve(out / experiment, "Rprec")
        if curve:  # the trained columns: their validation while training
            console.print(f"{column} dev curve, val/average/Rprec by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in sorted(curve.items())))
    if args.full:
        console.rule(f"[bold]{TASK_SPECIFIC}")
        began = time.perf_counter()
        results[TASK_SPECIFIC] = task_specific_scores(out, group, overrides)
        seconds[TASK_SPECIFIC] = time.perf_counter() - began
    total = time.perf_counter() - start
    atomic_write_text(out / "results.json", json.dumps({"scores": results, "seconds": seconds, "total_seconds": total}, indent=2))
    atomic_write_text(out / "results.md", markdown_table(results))
    console.print(results_table(results))
    console.print(f"total {total / 60:.1f} min; per column (s): " + ", ".join(f"{c} {s:.0f}" for c, s in seconds.items()))
    console.print(
        f"results: {out}/results.md and results.json\n"
        f"per run ({out}/<experiment>/): config.yaml, eval/<task>-guess.jsonl + -gold.jsonl (KILT format; "
        f"check with `multiret kilt-eval`), csv/ (CSV logs), wandb/ (W&B run, with the default logger; offline unless logged in: "
        f"`wandb sync {out}/*/wandb/offline-run-*`), checkpoints/last.ckpt and best.ckpt"
    )
    return 0
