"""Paired significance of one retriever against another, over the queries both answered.

A difference in average R-precision between two arms means little without its uncertainty.
Both arms answer the same evaluation queries, so the test is paired. Over several tasks the
statistic is the macro average that KILT papers report, the mean over tasks of each task's mean
difference. Three tests:

- :func:`paired_test` (``multiret compare --paired``): each query's score first averaged over
  the arm's seeds, the query the unit; written as a mean over all queries of
  ``d_i · N / (T · n_t)`` it is one sample, which scipy's sign-flip permutation test (p-value)
  and bootstrap (95% interval) take as is. It ignores the seeds' own spread.
- :func:`hierarchical_bootstrap` (``multiret study report``): seeds and queries both resampled,
  so that the interval holds the training noise between seeds as well as the choice of queries.
- :func:`per_seed_test`: the alternative that treats seeds as the only unit, a t-test over the
  seeds' paired differences; with three seeds it has little power, but no query-level assumption.

:func:`holm` corrects a family of per-task p-values (Holm 1979, step-down).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from multiret.data.jsonl import read_json, read_jsonl
from multiret.errors import UserError
from multiret.eval.kilt_metrics import item_scores

QueryScores = Mapping[str, Mapping[str, float]]  # task -> query id -> score
QUERY_SCORES = "query_scores.json"  # a collected run's per-query scores, task -> query id -> metric -> score


@dataclass(frozen=True)
class PairedResult:
    """Mean paired difference A − B, its 95% bootstrap interval and two-sided permutation p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    queries: int


def run_query_scores(run_dir: str | Path, tasks: Sequence[str], metric: str, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per task and query, ``metric`` of one evaluated run, recomputed from its ``eval/<task>-{gold,guess}.jsonl``.

    A study's data folder (``multiret study collect``) holds them instead as ``eval/query_scores.json``: read from there.
    """
    eval_dir = Path(run_dir) / "eval"
    if (eval_dir / QUERY_SCORES).is_file():
        stored = read_json(eval_dir / QUERY_SCORES)
        held = sorted({name for queries in stored.values() for values in queries.values() for name in values})
        if metric not in held or any(task not in stored for task in tasks):
            raise UserError(f"{eval_dir / QUERY_SCORES}: holds {held} of tasks {sorted(stored)}, not {metric} of {list(tasks)}; "
                            "collect the study again or test one of those")
        return {task: {query: values[metric] for query, values in stored[task].items()} for task in tasks}
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


SeedScores = Mapping[int, QueryScores]  # seed -> task -> query id -> score
BLOCK = 500  # resamples drawn at a time: bounds the memory of one task's resampled queries


@dataclass(frozen=True)
class BootstrapResult:
    """Mean difference A − B, its 95% percentile interval, the two-sided p and its floor ``1 / (resamples + 1)``."""

    difference: float
    low: float
    high: float
    p_value: float
    p_floor: float
    resamples: int
    queries: int
    seeds: tuple[int, int]  # seeds of A, of B


@dataclass(frozen=True)
class PerSeedResult:
    """Mean over the shared seeds of A's minus B's score, a t interval (95%) and a one-sample t-test's two-sided p."""

    difference: float
    low: float
    high: float
    p_value: float
    seeds: tuple[int, ...]


def seed_scores(runs: Sequence[tuple[int | None, QueryScores]], label: str) -> dict[int, dict[str, Mapping[str, float]]]:
    """One arm's ``(seed, scores)`` runs as seed → task → query → score (a task-specific arm's runs of a seed join up)."""
    arm: dict[int, dict[str, Mapping[str, float]]] = defaultdict(dict)
    for seed, scores in runs:
        if seed is None:
            raise UserError(f"{label}: a run without a seed in its config.yaml; the tests over seeds need every run's seed")
        for task, queries in scores.items():
            if task in arm[seed]:
                raise UserError(f"{label}: two runs of seed {seed} scored task {task}; one run per seed and task is expected")
            arm[seed][task] = queries
    return dict(arm)


def score_arrays(a: SeedScores, b: SeedScores, task: str) -> tuple[np.ndarray, np.ndarray, int]:
    """One task's ``(seeds × queries)`` scores of each arm, queries in one order; every seed must hold the same queries."""
    queries = None
    arrays = []
    for label, arm in (("A", a), ("B", b)):
        rows = []
        for seed in sorted(arm):
            if task not in arm[seed]:
                raise UserError(f"task {task}: arm {label}'s seed {seed} has no scores for it")
            queries = sorted(arm[seed][task]) if queries is None else queries
            if sorted(arm[seed][task]) != queries:
                raise UserError(f"task {task}: arm {label}'s seed {seed} was scored on other queries; the tests over seeds "
                                 "need every seed scored on the same full query set (data.max_eval_queries unset)")
            rows.append([arm[seed][task][q] for q in queries])
        arrays.append(np.array(rows, dtype=float))
    return arrays[0], arrays[1], len(queries)


def hierarchical_bootstrap(a: SeedScores, b: SeedScores, tasks: Sequence[str], *, resamples: int = 10_000,
                           seed: int = 0) -> BootstrapResult:
    """Bootstrap the macro-averaged difference A − B over seeds, then queries.

    Each resample draws each arm's seeds with replacement (independently: the arms' seeds are
    separate training runs), then each task's queries with replacement, the same query indices
    for both arms (every seed is scored on the same queries, so the pairing holds). The interval
    is the 2.5 and 97.5 percentiles of the resampled differences; the two-sided p is the share of
    resampled differences, centred on the observed one, at least as far from 0 as it, counted as
    ``(1 + k) / (resamples + 1)``, so no p is below that floor. With three seeds it is conservative
    where seeds differ query by query and too liberal where whole-seed offsets dominate (measured
    in docs/study.md); :func:`per_seed_test` is the check.
    """
    if not a or not b:
        raise UserError("each arm needs at least one seed")
    rng = np.random.default_rng(seed)
    seed_weights = [rng.multinomial(len(arm), np.full(len(arm), 1 / len(arm)), size=resamples) / len(arm) for arm in (a, b)]
    observed, resampled, queries = 0.0, np.zeros(resamples), 0
    for task in tasks:
        scores_a, scores_b, n = score_arrays(a, b, task)
        observed += (scores_a.mean(axis=0) - scores_b.mean(axis=0)).mean() / len(tasks)
        difference = seed_weights[0] @ scores_a - seed_weights[1] @ scores_b  # resamples × queries, seeds resampled
        for start in range(0, resamples, BLOCK):
            drawn = rng.integers(0, n, size=(min(BLOCK, resamples - start), n))
            block = difference[start:start + BLOCK]
            resampled[start:start + BLOCK] += np.take_along_axis(block, drawn, axis=1).mean(axis=1) / len(tasks)
        queries += n
    extreme = np.count_nonzero(np.abs(resampled - observed) >= abs(observed) - 1e-12)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return BootstrapResult(float(observed), float(low), float(high), (1 + extreme) / (resamples + 1), 1 / (resamples + 1),
                           resamples, queries, (len(a), len(b)))


def per_seed_test(a: SeedScores, b: SeedScores, tasks: Sequence[str]) -> PerSeedResult | None:
    """Seed s of A against seed s of B, on the seeds both arms ran: a one-sample t-test of the differences (None below 2)."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return None
    differences = np.array([seed_difference(a[s], b[s], tasks) for s in shared])
    mean = float(differences.mean())
    if np.ptp(differences) == 0:  # no spread: the t statistic is undefined
        return PerSeedResult(mean, mean, mean, float("nan"), tuple(shared))
    test = stats.ttest_1samp(differences, 0.0)
    interval = test.confidence_interval(0.95)
    return PerSeedResult(mean, float(interval.low), float(interval.high), float(test.pvalue), tuple(shared))


def seed_difference(a: QueryScores, b: QueryScores, tasks: Sequence[str]) -> float:
    """The macro-averaged difference A − B of one seed of each arm."""
    return sum(float((x[0] - y[0]).mean()) for x, y, _ in (score_arrays({0: a}, {0: b}, task) for task in tasks)) / len(tasks)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the k-th smallest times (m − k + 1), kept monotone, at most 1.

    Rejecting where the adjusted p is below α controls the family-wise error rate at α for any dependence between the tests.
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
