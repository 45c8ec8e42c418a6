"""A run's validation curve: ``val/<task>/<metric>`` by step, as validation while training logged it.

Read from the CSV logs a run folder keeps (``csv/version_*/metrics.csv``; a resumed run adds a
version), where :mod:`multiret.eval.dev_validation` logged them. The demo prints it; the
reports (:mod:`multiret.report.curves`) average it over seeds and plot it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from multiret.eval.dev_validation import PREFIX


def run_curve(folder: str | Path, metric: str, task: str = "average") -> dict[int, float]:
    """``{step: value}`` of ``val/<task>/<metric>`` in a run folder's CSV logs; empty when it logged none."""
    key = f"{PREFIX}/{task}/{metric}"
    curve: dict[int, float] = {}
    for path in sorted(Path(folder).glob("csv/version_*/metrics.csv")):
        with open(path, newline="") as handle:
            curve.update({int(row["step"]): float(row[key]) for row in csv.DictReader(handle) if row.get(key)})
    return curve
