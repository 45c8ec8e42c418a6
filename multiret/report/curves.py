"""Validation curves of the compared runs: ``val/average/<metric>`` by step, mean ± std over each arm's seeds.

A run's curve is read from its folder's CSV logs (:func:`multiret.eval.curves.run_curve`), or
from a W&B run's history through ``wandb.Api``, where Lightning's W&B logger put the same values.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from multiret.eval.dev_validation import PREFIX
from multiret.eval.figures import new_figure, save_figure

WANDB_STEP = "trainer/global_step"  # Lightning's W&B logger writes the global step beside every logged row


def wandb_curves(api_run: Any, task: str = "average") -> dict[str, dict[int, float]]:
    """Per metric, ``{step: value}`` of the ``val/<task>/<metric>`` keys in a ``wandb.Api`` run's history; empty when it logged none.

    The keys are those the run's summary holds (its last values); validation logs them all in one row.
    """
    prefix = f"{PREFIX}/{task}/"
    keys = sorted(key for key in api_run.summary.keys() if key.startswith(prefix))  # noqa: SIM118 (no __iter__)
    curves: dict[str, dict[int, float]] = {key.removeprefix(prefix): {} for key in keys}
    for row in api_run.scan_history(keys=[WANDB_STEP, *keys]) if keys else []:
        for key in keys:
            curves[key.removeprefix(prefix)][int(row[WANDB_STEP])] = float(row[key])
    return curves


def arm_curves(curves: Mapping[str, Sequence[Mapping[int, float]]]) -> dict[str, list[tuple[int, float, float]]]:
    """Per arm, ``(step, mean, std)`` at the steps every one of its runs logged (std 0 for one run)."""
    summary = {}
    for label, runs in curves.items():
        summary[label] = [(step, statistics.fmean(values := [run[step] for run in runs]),
                           statistics.stdev(values) if len(values) > 1 else 0.0) for step in common_steps(runs)]
    return summary


def common_steps(runs: Sequence[Mapping[int, float]]) -> list[int]:
    """The steps every run logged, in order (a run still training stops its arm's curve where it is)."""
    return sorted(set.intersection(*(set(run) for run in runs))) if runs else []


def mean_curve(runs: Sequence[Mapping[int, float]]) -> dict[int, float]:
    """One curve from several (a task-specific arm's per-task models of one seed): the mean at the steps they all logged."""
    return {step: statistics.fmean(run[step] for run in runs) for step in common_steps(runs)}


def plot_arm_curves(summary: Mapping[str, Sequence[tuple[int, float, float]]], runs: Mapping[str, int], ylabel: str,
                    path: Path) -> None:
    """One line per arm (``summary``: :func:`arm_curves`' points), a band of ± std, ``runs`` curves behind each."""
    figure, axes = new_figure(7)
    for label, points in sorted(summary.items()):
        steps, means, stds = zip(*points)
        axes.plot(steps, means, marker="o", label=f"{label} ({runs[label]} runs)")
        axes.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.2)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize="small")
    save_figure(figure, path)


def plot_curves(sources: Sequence[tuple[str, Mapping[int, float]]], metric: str, path: Path) -> bool:
    """Plot the arms' validation curves (``sources``: ``(arm label, run's curve)``); False, writing nothing, when no run has one."""
    by_arm: dict[str, list[Mapping[int, float]]] = defaultdict(list)
    for label, curve in sources:
        if curve:
            by_arm[label].append(curve)
    summary = {label: points for label, points in arm_curves(by_arm).items() if points}
    if not summary:
        return False
    plot_arm_curves(summary, {label: len(by_arm[label]) for label in summary}, f"{PREFIX}/average/{metric}", path)
    return True
