"""`multiret study collect`: the compact data folder a study's results page is generated from.

A study's run folders hold checkpoints, indexes and machine paths; the page needs a few small
files of each. This writes them under ``OUT`` in the same layout (``tune/<arm>/<job>/``,
``final/<arm>/<job>/``), so that ``multiret study report OUT`` reads it as it reads the study:
each run's ``config.yaml`` and ``.hydra/overrides.yaml`` with absolute paths cut to
``<path>/<name>``, ``eval/metrics.json``, ``wall_seconds.json``, the per-query scores of the
page's metrics (``eval/query_scores.json``, in place of the guess and gold files), one CSV of the
validation scores and task-gradient cosines by step (every logger version merged, a later one
winning), the study's ``invocations.log``, and the specialisation measured on the seed-13
checkpoints (``specialization/``: its JSON and chart), which the folder cannot hold.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from multiret.atomic import atomic_write_text
from multiret.errors import UserError
from multiret.experiment.analyze import specialization
from multiret.report.compare import metric_ks
from multiret.report.significance import QUERY_SCORES, run_query_scores
from multiret.report.study import natural_key
from multiret.report.study_report import METRICS, SPECIALIZATION, seed_checkpoint

LOGGED = ("val/", "mtl/cosine/")  # the CSV columns the page reads: validation scores and task-gradient cosines


def strip_path(value: Any) -> Any:
    """An absolute path (``/…``, ``~…``) as ``<path>/<its name>``; anything else as it is, lists and mappings walked."""
    if isinstance(value, dict):
        return {key: strip_path(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strip_path(item) for item in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return f"<path>/{Path(value).name}"
    return value


def strip_override(override: str) -> str:
    """``key=/abs/path`` as ``key=<path>/path``."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{strip_path(value)}" if sep else override


def merged_log(run: Path) -> str | None:
    """The page's CSV columns of every ``csv/version_*/metrics.csv`` merged by step (later versions win); None when none."""
    rows: dict[int, dict[str, str]] = {}
    for path in sorted(run.glob("csv/version_*/metrics.csv"), key=lambda p: natural_key(p.parent)):
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                kept = {k: v for k, v in row.items() if k and k.startswith(LOGGED) and v not in ("", None)}
                if kept:
                    rows.setdefault(int(row["step"]), {}).update(kept)
    if not rows:
        return None
    columns = sorted({column for row in rows.values() for column in row})
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["step", *columns])
    writer.writerows([step, *(rows[step].get(column, "") for column in columns)] for step in sorted(rows))
    return text.getvalue()


def collect_run(run: Path, out: Path) -> None:
    """One run folder's small files, paths stripped, under ``out``."""
    if (run / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(strip_path(config))))
    if (run / ".hydra" / "overrides.yaml").is_file():
        overrides = [strip_override(str(o)) for o in OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml"))]
        atomic_write_text(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    for name in ("eval/metrics.json", "wall_seconds.json"):
        if (run / name).is_file():
            atomic_write_text(out / name, (run / name).read_text(encoding="utf-8"))
    tasks = [p.name.removesuffix("-gold.jsonl") for p in sorted((run / "eval").glob("*-gold.jsonl"))]
    if tasks and (run / "config.yaml").is_file():
        ks = metric_ks(METRICS)
        by_metric = {metric: run_query_scores(run, tasks, metric, ks) for metric in METRICS}
        scores = {task: {query: {metric: by_metric[metric][task][query] for metric in METRICS} for query in by_metric[METRICS[0]][task]}
                  for task in tasks}
        atomic_write_text(out / "eval" / QUERY_SCORES, json.dumps(scores, sort_keys=True, separators=(",", ":")) + "\n")
    log = merged_log(run)
    if log is not None:
        atomic_write_text(out / "csv" / "version_0" / "metrics.csv", log)


def collect(root: Path, out: Path, checkpoints: list[Path], batches: int) -> int:
    """Every run of ``root/tune`` and ``root/final`` into ``out``, then the specialisation of ``checkpoints``; the runs written."""
    if not root.is_dir():
        raise UserError(f"{root}: no such study folder (give the ROOT that holds tune/ and final/)")
    runs = sorted(p for stage in ("tune", "final") for p in (root / stage).glob("*/*") if p.is_dir())
    for run in runs:
        collect_run(run, out / run.relative_to(root))
    if (root / "invocations.log").is_file():
        atomic_write_text(out / "invocations.log", (root / "invocations.log").read_text(encoding="utf-8"))
    if checkpoints:
        summary = specialization(checkpoints, out / SPECIALIZATION, batches, measure=True, low_entropy=0.5)
        atomic_write_text(out / SPECIALIZATION / "specialization.json", json.dumps(strip_path(summary), indent=2))
        atomic_write_text(out / SPECIALIZATION / "settings.json", json.dumps({"batches": batches}) + "\n")
    return len(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiret study collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the study folder (tune/, final/)")
    parser.add_argument("--out", type=Path, required=True, help="the data folder to write (e.g. docs/results-vital/data)")
    parser.add_argument("--taco", default="taco", help="the TACO arm (its folder name), whose specialisation is measured")
    parser.add_argument("--naive", default="naive", help="the naive multitask arm, whose specialisation is measured")
    parser.add_argument("--batches", type=int, default=8, help="held-out batches the specialisation measure uses")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):  # a stale run of an earlier collect must not survive into the page
        raise UserError(f"{args.out}: exists and is not empty; remove it first (collect writes a fresh folder)")
    found = [seed_checkpoint(args.root / "final", arm) for arm in (args.naive, args.taco)]
    written = collect(args.root, args.out, [c for c in found if c is not None] if all(found) else [], args.batches)
    print(f"wrote {written} runs' data to {args.out}")
    return 0
