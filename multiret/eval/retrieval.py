"""Score passage rankings per task the KILT way, and keep the files that reproduce the score."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from multiret.atomic import atomic_write_text
from multiret.data.corpus import Corpus
from multiret.data.jsonl import read_jsonl, write_jsonl
from multiret.data.kilt import keyed_by_title
from multiret.data.tasks import TaskSpec
from multiret.eval.kilt_metrics import evaluate_kilt, gold_page_lists, guess_record, page_ranking

log = logging.getLogger(__name__)

COVERAGE = "gold_coverage.json"
METRICS = "metrics.json"  # every task's scores, as evaluate_task_rankings wrote them


def evaluate_task_rankings(
    tasks: Sequence[TaskSpec],
    split: str,
    query_ids: Mapping[str, Sequence[str]],
    rankings: Mapping[str, Sequence[Sequence[int]]],
    corpus: Corpus,
    out_dir: str | Path,
    ks: Sequence[int] = (1, 5, 20),
) -> dict[str, dict[str, float]]:
    """KILT page-level metrics per task from passage rankings (corpus rows, best first).

    Writes ``<task>-gold.jsonl`` (the evaluated gold items) and ``<task>-guess.jsonl`` into
    ``out_dir``, so ``multiret kilt-eval --gold ... --guess ...`` reproduces each number, and
    ``metrics.json`` with every task's scores. Items none of whose gold pages is in the corpus
    are counted (``gold_coverage.json`` and a warning): they score 0, as in KILT.
    """
    out_dir = Path(out_dir)
    results: dict[str, dict[str, float]] = {}
    coverage: dict[str, dict[str, int]] = {}
    for task in tasks:
        ids = list(query_ids[task.name])
        gold = gold_records(task, split, ids, corpus)
        guesses = [
            guess_record(qid, page_ranking([corpus.page_ids[r] for r in rows if r >= 0]))
            for qid, rows in zip(ids, rankings[task.name])
        ]
        write_jsonl(out_dir / f"{task.name}-gold.jsonl", gold)
        write_jsonl(out_dir / f"{task.name}-guess.jsonl", guesses)
        results[task.name] = evaluate_kilt(gold, guesses, ks)
        coverage[task.name] = gold_coverage(gold, corpus)
        if coverage[task.name]["no_gold_page_in_corpus"]:
            log.warning("%s (%s): %d of %d items have no gold page in the corpus; they are scored as misses, as KILT does",
                        task.name, split, coverage[task.name]["no_gold_page_in_corpus"], coverage[task.name]["items"])
        log.info("%s (%s, %d queries): %s", task.name, split, len(ids), results[task.name])
    atomic_write_text(out_dir / METRICS, json.dumps(results, indent=2))
    atomic_write_text(out_dir / COVERAGE, json.dumps(coverage, indent=2))
    return results


def gold_records(task: TaskSpec, split: str, ids: Sequence[str], corpus: Corpus) -> list[dict[str, Any]]:
    """The KILT gold records of ``ids`` in the task's ``split`` file, in file order, keyed as the corpus keys pages."""
    wanted = set(ids)
    gold = [r for r in read_jsonl(task.split_path(split)) if str(r.get("id")).strip() in wanted]
    if getattr(corpus, "page_key", "wikipedia_id") == "title":  # a passage file without page ids
        gold = [keyed_by_title(r) for r in gold]
    return gold


def gold_coverage(gold: Sequence[Mapping[str, Any]], corpus: Corpus) -> dict[str, int]:
    """How many evaluated items can score at all: those with no gold page in the corpus can only miss."""
    pages = [{page for output in gold_page_lists(record) for page in output} for record in gold]
    missing = sum(bool(item) and not any(corpus.has_page(page) for page in item) for item in pages)
    return {"items": len(gold), "no_gold_page_in_corpus": missing}


def with_average(results: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Add an ``average`` row: the unweighted mean over tasks, as KILT papers report it."""
    rows = {task: dict(metrics) for task, metrics in results.items()}
    if rows:
        keys = next(iter(rows.values())).keys()
        rows["average"] = {k: sum(m[k] for m in results.values()) / len(results) for k in keys}
    return rows


def saved_results(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, float]] | None:
    """The scores an earlier :func:`evaluate_task_rankings` wrote into ``out_dir``, with their average; None if none."""
    path = Path(out_dir) / METRICS
    return with_average(json.loads(path.read_text())) if path.is_file() else None
