"""`multiret compare`: the comparison table of multitask runs against task-specific runs.

Reads the run folders that ``multiret train`` writes (``config.yaml`` and
``eval/metrics.json``: the numbers every logger received), groups multitask runs by
experiment and method (seeds averaged), builds the task-specific column from the
task-specific runs, and writes a markdown table (per task and average; mean ± std over seeds;
each multitask column's change against task-specific) and a bar chart.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from multiret.data.jsonl import atomic_write_text
from multiret.eval.figures import new_figure, save_figure

TASK_SPECIFIC = "task-specific"


@dataclass(frozen=True)
class RunResult:
    """One evaluated run: where it is, its column label, its tasks and their metrics."""

    path: Path
    label: str
    job_type: str
    tasks: tuple[str, ...]
    metrics: dict[str, dict[str, float]]


def load_runs(roots: Sequence[Path]) -> list[RunResult]:
    """Every evaluated run folder under ``roots`` (a run, a multirun folder, or any parent)."""
    runs = []
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such run or sweep folder")
        for metrics_path in sorted(root.rglob("eval/metrics.json")):
            folder = metrics_path.parent.parent
            if not (folder / "config.yaml").is_file():
                continue
            cfg = OmegaConf.load(folder / "config.yaml")
            method = str(cfg.method._target_).rsplit(".", 1)[-1]
            job_type = str(cfg.get("job_type", "multitask"))
            label = TASK_SPECIFIC if job_type == TASK_SPECIFIC else f"{cfg.task_name}: {method}"
            metrics = json.loads(metrics_path.read_text())
            runs.append(RunResult(folder, label, job_type, tuple(cfg.data.task_names), metrics))
    if not runs:
        raise ValueError(f"no evaluated run (config.yaml + eval/metrics.json) under {', '.join(map(str, roots))}")
    return runs


def check_task_sets(runs: Sequence[RunResult]) -> tuple[str, ...]:
    """The multitask runs must share one task list; task-specific runs must cover it."""
    multitask = [r for r in runs if r.job_type != TASK_SPECIFIC]
    if not multitask:
        raise ValueError("no multitask run to compare")
    tasks = multitask[0].tasks
    odd = [f"{r.path} ({', '.join(r.tasks)})" for r in multitask if set(r.tasks) != set(tasks)]
    if odd:
        raise ValueError(f"multitask runs with other tasks than {list(tasks)} (from {multitask[0].path}): {'; '.join(odd)}")
    specific = {t for r in runs if r.job_type == TASK_SPECIFIC for t in r.tasks}
    stray = sorted(specific - set(tasks))
    if stray:
        raise ValueError(f"task-specific runs for tasks the multitask runs lack: {stray}")
    return tasks


def table(runs: Sequence[RunResult], metric: str) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """Per column label and task, the metric's values over seeds (task-specific: its own runs)."""
    tasks = check_task_sets(runs)
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for task in run.tasks:
            values[run.label][task].append(run.metrics[task][metric])
    for column in values.values():
        if all(column.get(t) for t in tasks):
            column["average"] = [statistics.fmean(v) for v in zip(*(column[t] for t in tasks))]
    return [*tasks, "average"], values


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(rows: list[str], values: dict[str, dict[str, list[float]]], metric: str) -> str:
    columns = sorted(values, key=lambda c: (c == TASK_SPECIFIC, c))
    lines = [f"### {metric}", "", "| task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(cell(values[c].get(row, [])) for c in columns) + " |")
    if TASK_SPECIFIC in values:
        base = values[TASK_SPECIFIC]
        for column in (c for c in columns if c != TASK_SPECIFIC):
            deltas = [
                f"{statistics.fmean(values[column][r]) - statistics.fmean(base[r]):+.3f}" if base.get(r) and values[column].get(r) else "–"
                for r in rows
            ]
            lines.append(f"| Δ {column} vs task-specific | " + " | ".join(deltas) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[str], values: dict[str, dict[str, list[float]]], metric: str, path: Path) -> None:
    columns = sorted(values, key=lambda c: (c == TASK_SPECIFIC, c))
    width = 0.8 / len(columns)
    figure, axes = new_figure(max(6, 1.6 * len(rows)))
    for i, column in enumerate(columns):
        heights = [statistics.fmean(values[column][r]) if values[column].get(r) else 0.0 for r in rows]
        axes.bar([x + i * width for x in range(len(rows))], heights, width, label=column)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], rows)
    axes.set_ylabel(metric)
    axes.legend(fontsize="small")
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiret compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="run folders, multirun folders, or folders above them")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="folder for comparison.md and the charts")
    parser.add_argument("--metrics", default="Rprec,recall@5", help="comma-separated KILT metric names")
    args = parser.parse_args(argv)
    runs = load_runs(args.roots)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    for metric in args.metrics.split(","):
        rows, values = table(runs, metric)
        sections.append(markdown(rows, values, metric))
        plot(rows, values, metric, args.out / f"comparison-{metric.replace('@', '_at_')}.png")
    text = f"{len(runs)} runs\n\n" + "\n".join(sections)
    atomic_write_text(args.out / "comparison.md", text)
    print(text)
    return 0
