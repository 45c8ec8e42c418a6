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


def mean_over_seeds(runs: Sequence[QueryScores], label: str, seeds: Sequence[int | None] | None = None) -> dict[str, dict[str, float]]:
    """Average each query's score over the arm's runs that hold its task (seeds; task-specific: one task a run).

    Where the seeds drew different queries of a task (``data.max_eval_queries`` samples per seed), each seed's query is
    its own unit, keyed ``seed <s>: <query>``, so an arm run with the same seeds pairs query for query; without
    ``seeds`` (or with a seed unknown or repeated for a task) such runs are refused, since an average would mix query sets.
    """
    by_task: dict[str, list[tuple[int | None, Mapping[str, float]]]] = defaultdict(list)
    for number, run in enumerate(runs):
        for task, queries in run.items():
            by_task[task].append((None if seeds is None else seeds[number], queries))
    if not by_task:
        raise ValueError(f"{label}: no run to test")
    means: dict[str, dict[str, float]] = {}
    for task, task_runs in by_task.items():
        first = task_runs[0][1]
        if all(set(r) == set(first) for _, r in task_runs):
            means[task] = {q: sum(r[q] for _, r in task_runs) / len(task_runs) for q in first}
            continue
        run_seeds = [seed for seed, _ in task_runs]
        if None in run_seeds or len(set(run_seeds)) != len(run_seeds):
            raise ValueError(f"{label}: its runs of task {task} were evaluated on different queries; a paired test needs the same ones")
        means[task] = {f"seed {seed}: {q}": score for seed, r in task_runs for q, score in r.items()}
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
    permutation = stats.permutation_test((z,), np.mean, permutation_type="samples", n_resamples=resamples,
                                         vectorized=True, random_state=rng)
    interval = stats.bootstrap((z,), np.mean, n_resamples=resamples, method="percentile", random_state=rng).confidence_interval
    return PairedResult(float(z.mean()), float(interval.low), float(interval.high), float(permutation.pvalue), total)
