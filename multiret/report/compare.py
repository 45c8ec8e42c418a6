"""`multiret compare`: the comparison table of multitask runs against task-specific runs.

Reads the run folders that ``multiret train`` writes (``config.yaml`` and
``eval/metrics.json``: the numbers every logger received), W&B's local run folders (offline
ones included) or the W&B API (the same numbers, as ``{split}/{task}/{metric}``), groups
multitask runs by experiment and method (seeds averaged), builds the task-specific column
from the task-specific runs, and writes a markdown table (per task and average; mean ± std over seeds;
each multitask column's change against task-specific), a bar chart (error bars: std over seeds) and, where run
folders (their CSV logs) or W&B API runs (their history) hold validation scores, their validation curves (mean ± std
over seeds per column); ``--paired A B`` adds
paired significance tests between two columns over their runs' per-query scores
(:mod:`multiret.report.significance`).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from multiret.atomic import atomic_write_text
from multiret.data.jsonl import read_json
from multiret.errors import UserError
from multiret.eval.curves import run_curve
from multiret.eval.figures import new_figure, save_figure
from multiret.mtl.base import method_id
from multiret.report import wandb_store
from multiret.report.curves import plot_curves, wandb_curves
from multiret.report.significance import PairedResult, mean_over_seeds, paired_test, run_query_scores

TASK_SPECIFIC = "task-specific"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """One evaluated run: where it is (a folder or a W&B run path), its column label, its tasks, their metrics and its seed."""

    source: str
    label: str
    job_type: str
    tasks: tuple[str, ...]
    metrics: dict[str, dict[str, float]]
    seed: int | None = None
    curves: dict[str, dict[int, float]] | None = None  # validation curves per metric read with the run (W&B API); None: in its folder


def validation_curve(run: RunResult, metric: str) -> dict[int, float]:
    """A run's ``val/average/<metric>`` by step: read with it from W&B, else from its folder's CSV logs."""
    return run_curve(run.source, metric) if run.curves is None else run.curves.get(metric, {})


def run_result(source: str, config: Mapping[str, Any], metrics: dict[str, dict[str, float]], job_type: str = "multitask") -> RunResult:
    """Label a run from its logged config (``task_name``, ``method.name``, ``job_type``, ``data.task_names``).

    Every reader goes through here, so a run gets the same column whether it is read from its
    folder or from W&B; ``job_type`` is the fallback for configs that lack the key.
    """
    cfg = OmegaConf.create(dict(config))
    method = method_id(cfg)
    job_type = str(cfg.get("job_type", job_type))
    label = TASK_SPECIFIC if job_type == TASK_SPECIFIC else f"{cfg.task_name}: {method}"
    seed = cfg.get("seed")
    return RunResult(source, label, job_type, tuple(cfg.data.task_names), metrics, None if seed is None else int(seed))


def summary_metrics(source: str, config: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, dict[str, float]] | None:
    """Per-task metrics from the ``{split}/{task}/{metric}`` keys ``log_results`` logged; None when not evaluated."""
    split, tasks = config["data"]["eval_split"], config["data"]["task_names"]
    metrics: dict[str, dict[str, float]] = {task: {} for task in tasks}
    for key in summary.keys():  # noqa: SIM118 (the W&B API's summary has keys() but no __iter__)
        for task in tasks:
            prefix = f"{split}/{task}/"
            if key.startswith(prefix) and "/" not in key[len(prefix):]:
                metrics[task][key[len(prefix):]] = float(summary[key])
    missing = [t for t, m in metrics.items() if not m]
    if len(missing) == len(tasks):
        return None
    if missing:
        raise UserError(
            f"{source}: W&B summary has {split}/<task>/<metric> keys for some tasks but none for {missing}; "
            "was its evaluation cut off?"
        )
    return metrics


def load_runs(roots: Sequence[Path], groups: Sequence[str] = ()) -> list[RunResult]:
    """Every evaluated run under ``roots`` (a run, a multirun folder, W&B run folders, or any parent).

    Our run folders are read from ``config.yaml`` and ``eval/metrics.json``; W&B run folders
    (``wandb/offline-run-*``) from their ``.wandb`` file, unless they sit inside one of those run
    folders (the same run, read once). ``groups``, if given, keeps the runs of those W&B groups.
    """
    runs = []
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such run or sweep folder")
        folders = {m.parent.parent for m in root.rglob("eval/metrics.json") if (m.parent.parent / "config.yaml").is_file()}
        for folder in sorted(folders):
            config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
            if not groups or config.get("group") in groups:
                runs.append(run_result(str(folder), config, read_json(folder / "eval" / "metrics.json")))
        for folder in wandb_store.run_folders(root):
            if any(parent in folders for parent in folder.parents):
                continue
            logged = wandb_store.read_run(wandb_store.run_file(folder))
            metrics = summary_metrics(str(folder), logged.config, logged.summary) if "data" in logged.config else None
            if metrics is None and not logged.exited:
                log.warning("%s: W&B run without an exit record (still being written, or crashed) and no scores; skipped", folder)
            if metrics is not None and (not groups or logged.group in groups):
                runs.append(run_result(str(folder), logged.config, metrics, logged.job_type or "multitask"))
    if not runs:
        raise UserError(
            f"no evaluated run (config.yaml + eval/metrics.json, or a W&B run folder with {{split}}/{{task}}/{{metric}} "
            f"in its summary){f' in groups {list(groups)}' if groups else ''} under {', '.join(map(str, roots))}"
        )
    return runs


def load_wandb_api(project: str, groups: Sequence[str] = ()) -> list[RunResult]:
    """Evaluated runs of a W&B project (``entity/project``) through ``wandb.Api``, optionally of some groups only."""
    import wandb

    runs = []
    for api_run in wandb.Api().runs(project, filters={"group": {"$in": list(groups)}} if groups else {}):
        source = "/".join(api_run.path)
        metrics = summary_metrics(source, api_run.config, api_run.summary) if "data" in api_run.config else None
        if metrics is not None:
            run = run_result(source, api_run.config, metrics, api_run.job_type or "multitask")
            runs.append(replace(run, curves=wandb_curves(api_run)))
    if not runs:
        raise UserError(f"no evaluated run in W&B project {project}{f' groups {list(groups)}' if groups else ''}")
    return runs


def check_task_sets(runs: Sequence[RunResult]) -> tuple[str, ...]:
    """The multitask runs must share one task list; task-specific runs must cover it."""
    multitask = [r for r in runs if r.job_type != TASK_SPECIFIC]
    if not multitask:
        raise UserError("no multitask run to compare")
    tasks = multitask[0].tasks
    odd = [f"{r.source} ({', '.join(r.tasks)})" for r in multitask if set(r.tasks) != set(tasks)]
    if odd:
        raise UserError(f"multitask runs with other tasks than {list(tasks)} (from {multitask[0].source}): {'; '.join(odd)}")
    specific = {t for r in runs if r.job_type == TASK_SPECIFIC for t in r.tasks}
    stray = sorted(specific - set(tasks))
    if stray:
        raise UserError(f"task-specific runs for tasks the multitask runs lack: {stray}")
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
    """One row per task (and the average), one column per arm, then one ``Δ <arm> vs task-specific`` column per multitask arm."""
    columns = sorted(values, key=lambda c: (c == TASK_SPECIFIC, c))
    base = values.get(TASK_SPECIFIC)
    compared = [c for c in columns if c != TASK_SPECIFIC] if base is not None else []
    header = [*columns, *(f"Δ {c} vs task-specific" for c in compared)]
    lines = [f"### {metric}", "", "| task | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for row in rows:
        cells = [cell(values[c].get(row, [])) for c in columns]
        cells += [f"{statistics.fmean(values[c][row]) - statistics.fmean(base[row]):+.3f}"
                  if base.get(row) and values[c].get(row) else "–" for c in compared]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[str], values: dict[str, dict[str, list[float]]], metric: str, path: Path) -> None:
    columns = sorted(values, key=lambda c: (c == TASK_SPECIFIC, c))
    width = 0.8 / len(columns)
    figure, axes = new_figure(max(6, 1.6 * len(rows)))
    for i, column in enumerate(columns):
        heights = [statistics.fmean(values[column][r]) if values[column].get(r) else 0.0 for r in rows]
        errors = [statistics.stdev(values[column][r]) if len(values[column].get(r, [])) > 1 else 0.0 for r in rows]
        axes.bar([x + i * width for x in range(len(rows))], heights, width, yerr=errors, capsize=3, label=column)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], rows)
    axes.set_ylabel(metric)
    axes.legend(fontsize="small")
    save_figure(figure, path)


def paired_results(
    runs: Sequence[RunResult], pairs: Sequence[Sequence[str]], metric: str, ks: Sequence[int]
) -> list[tuple[str, str, str, PairedResult]]:
    """Paired tests A − B per task and on the average (``(A, B, row, result)``), from the runs' own guess and gold files."""
    rows, _ = table(runs, metric)
    tasks = rows[:-1]
    labels = {r.label for r in runs}
    results = []
    for a_label, b_label in pairs:
        arms = []
        for label in (a_label, b_label):
            if label not in labels:
                raise ValueError(f"--paired: no column {label!r}; the columns are {sorted(labels)}")
            arm_runs = [r for r in runs if r.label == label]
            if not all(Path(r.source, "eval").is_dir() for r in arm_runs):
                raise ValueError(f"--paired: column {label!r} has runs without an eval/ folder (W&B runs); give their run folders")
            scores = [run_query_scores(r.source, r.tasks, metric, ks) for r in arm_runs]
            arms.append(mean_over_seeds(scores, label, [r.seed for r in arm_runs]))
        for row, row_tasks in [*((t, [t]) for t in tasks), ("average", tasks)]:
            results.append((a_label, b_label, row, paired_test(arms[0], arms[1], row_tasks)))
    return results


def paired_markdown(results: Sequence[tuple[str, str, str, PairedResult]], metric: str) -> str:
    """Markdown rows of :func:`paired_results`."""
    lines = [
        f"### paired tests, {metric} (A − B over queries, each query averaged over seeds, or one unit per seed and query "
        "where the seeds drew different queries; "
        "95% bootstrap interval, two-sided sign-flip permutation p)",
        "",
        "| A − B | task | Δ | 95% interval | p | queries |",
        "|---|---|---|---|---|---|",
    ]
    for a_label, b_label, row, result in results:
        lines.append(
            f"| {a_label} − {b_label} | {row} | {result.difference:+.3f} | [{result.low:+.3f}, {result.high:+.3f}] "
            f"| {result.p_value:.4f} | {result.queries} |"
        )
    return "\n".join(lines) + "\n"


def paired_section(runs: Sequence[RunResult], pairs: Sequence[Sequence[str]], metric: str, ks: Sequence[int]) -> str:
    """Markdown rows of paired tests A − B per task and on the average, from the runs' own guess and gold files."""
    return paired_markdown(paired_results(runs, pairs, metric, ks), metric)


def metric_ks(metrics: Sequence[str]) -> list[int]:
    """The cut-offs KILT's metrics need for these names (``recall@5`` needs 5); 1 when none has one."""
    return sorted({int(m.split("@")[1]) for m in metrics if "@" in m} | {1})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiret compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", type=Path, help="run folders, multirun folders, W&B run folders, or folders above them")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read the runs of this W&B project through the W&B API")
    parser.add_argument("--group", action="append", default=[], help="only the runs of this W&B group (the config's `group`); repeatable")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="folder for comparison.md and the charts")
    parser.add_argument("--metrics", default="Rprec,recall@5", help="comma-separated KILT metric names")
    parser.add_argument(
        "--paired", nargs=2, action="append", default=[], metavar=("A", "B"),
        help="add a paired significance test of column A against column B (labels as in the table, e.g. "
        "'vital_methods: TACO' task-specific); repeatable; needs run folders (their eval/ guess and gold files)",
    )
    args = parser.parse_args(argv)
    if not args.roots and not args.wandb:
        parser.error("give run or sweep folders, or --wandb ENTITY/PROJECT")
    runs = [
        *(load_runs(args.roots, args.group) if args.roots else []),
        *(load_wandb_api(args.wandb, args.group) if args.wandb else []),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    sections = []
    for metric in args.metrics.split(","):
        rows, values = table(runs, metric)
        sections.append(markdown(rows, values, metric))
        if args.paired:
            sections.append(paired_section(runs, args.paired, metric, metric_ks(args.metrics.split(","))))
        plot(rows, values, metric, args.out / f"comparison-{metric.replace('@', '_at_')}.png")
        curves = args.out / f"curves-{metric.replace('@', '_at_')}.png"
        if plot_curves([(r.label, validation_curve(r, metric)) for r in runs], metric, curves):
            log.info("validation curves: %s", curves)
    text = f"{len(runs)} runs\n\n" + "\n".join(sections)
    atomic_write_text(args.out / "comparison.md", text)
    print(text)
    return 0
