"""Validation curves of the compared runs: ``val/average/<metric>`` by step, mean ± std over each arm's seeds.

Read from the CSV logs a run folder keeps (``csv/version_*/metrics.csv``; a resumed run adds a
version), where validation while training (:mod:`multiret.eval.dev_validation`) logged them.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from multiret.eval.dev_validation import PREFIX
from multiret.eval.figures import new_figure, save_figure


def run_curve(folder: str | Path, metric: str, task: str = "average") -> dict[int, float]:
    """``{step: value}`` of ``val/<task>/<metric>`` in a run folder's CSV logs; empty when it logged none."""
    key = f"{PREFIX}/{task}/{metric}"
    curve: dict[int, float] = {}
    for path in sorted(Path(folder).glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as handle:
            curve.update({int(row["step"]): float(row[key]) for row in csv.DictReader(handle) if row.get(key)})
    return curve


def arm_curves(curves: Mapping[str, Sequence[Mapping[int, float]]]) -> dict[str, list[tuple[int, float, float]]]:
    """Per arm, ``(step, mean, std)`` at the steps every one of its runs logged (std 0 for one run)."""
    summary = {}
    for label, runs in curves.items():
        steps = sorted(set.intersection(*(set(run) for run in runs))) if runs else []
        summary[label] = [(step, statistics.fmean(values := [run[step] for run in runs]),
                           statistics.stdev(values) if len(values) > 1 else 0.0) for step in steps]
    return summary


def plot_curves(sources: Sequence[tuple[str, str]], metric: str, path: Path) -> bool:
    """Plot the arms' validation curves (``sources``: ``(arm label, run folder)``); False, writing nothing, when no run has one."""
    by_arm: dict[str, list[dict[int, float]]] = defaultdict(list)
    for label, folder in sources:
        curve = run_curve(folder, metric)
        if curve:
            by_arm[label].append(curve)
    summary = {label: points for label, points in arm_curves(by_arm).items() if points}
    if not summary:
        return False
    figure, axes = new_figure(7)
    for label, points in sorted(summary.items()):
        steps, means, stds = zip(*points)
        axes.plot(steps, means, marker="o", label=f"{label} ({len(by_arm[label])} runs)")
        axes.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.2)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(f"{PREFIX}/average/{metric}")
    axes.legend(fontsize="small")
    save_figure(figure, path)
    return True
