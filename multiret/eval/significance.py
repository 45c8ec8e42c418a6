"""Paired significance of one retriever against another, over the queries both answered.

A difference in average R-precision between two arms means little without its uncertainty.
Both arms answer the same evaluation queries, so the test is paired: for every query the
score of arm A minus that of arm B (each first averaged over the arm's seeds, so the query is
the unit and seeds only reduce training noise). Over several tasks the statistic is the
macro average that KILT papers report, the mean over tasks of each task's mean difference;
written as a mean over all queries of ``d_i · N / (T · n_t)`` it is one sample, which
scipy's sign-flip permutation test (p-value) and bootstrap (95% interval) take as is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from multiret.data.jsonl import read_jsonl
from multiret.eval.kilt_metrics import item_scores

QueryScores = Mapping[str, Mapping[str, float]]  # task -> query id -> score


@dataclass(frozen=True)
class PairedResult:
    """Mean paired difference A − B, its 95% bootstrap interval and two-sided permutation p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    queries: int


def run_query_scores(run_dir: str | Path, tasks: Sequence[str], metric: str, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per task and query, ``metric`` of one evaluated run, recomputed from its ``eval/<task>-{gold,guess}.jsonl``."""
    eval_dir = Path(run_dir) / "eval"
    scores: dict[str, dict[str, float]] = {}
    for task in tasks:
        gold, guess = eval_dir / f"{task}-gold.jsonl", eval_dir / f"{task}-guess.jsonl"
        items = item_scores(read_jsonl(gold), read_jsonl(guess), ks, gold_side=f"gold file {gold}", guess_side=f"guess file {guess}")
        scores[task] = {query: values[metric] for query, values in items.items()}
    return scores


def mean_over_seeds(runs: Sequence[QueryScores], label: str) -> dict[str, dict[str, float]]:
    """Average each query's score over the arm's runs that hold its task (seeds; task-specific: one task a run).

    Every run of a task must hold the same queries, or the average would mix query sets.
    """
    by_task: dict[str, list[Mapping[str, float]]] = defaultdict(list)
    for run in runs:
        for task, queries in run.items():
            by_task[task].append(queries)
    if not by_task:
        raise ValueError(f"{label}: no run to test")
    means: dict[str, dict[str, float]] = {}
    for task, task_runs in by_task.items():
        if any(set(r) != set(task_runs[0]) for r in task_runs):
            raise ValueError(f"{label}: its runs of task {task} were evaluated on different queries; a paired test needs the same ones")
        means[task] = {q: sum(r[q] for r in task_runs) / len(task_runs) for q in task_runs[0]}
    return means


def paired_test(
    a: QueryScores, b: QueryScores, tasks: Sequence[str], *, resamples: int = 10_000, seed: int = 0
) -> PairedResult:
    """Test the macro-averaged difference A − B over ``tasks`` (one task: a plain paired test)."""
    weighted: list[np.ndarray] = []
    for task in tasks:
        if set(a[task]) != set(b[task]):
            raise ValueError(f"task {task}: the two arms were evaluated on different queries; a paired test needs the same ones")
        queries = sorted(a[task])
        weighted.append(np.array([a[task][q] - b[task][q] for q in queries]) / len(queries))
    total = sum(len(d) for d in weighted)
    z = np.concatenate(weighted) * total / len(tasks)
    rng = np.random.default_rng(seed)
    permutation = stats.permutation_test((z,), np.mean, permutation_type="samples", n_resamples=resamples, vectorized=True, random_state=rng)
    interval = stats.bootstrap((z,), np.mean, n_resamples=resamples, method="percentile", random_state=rng).confidence_interval
    return PairedResult(float(z.mean()), float(interval.low), float(interval.high), float(permutation.pvalue), total)
