"""The study page's paired tests: a hierarchical bootstrap per task and on the average, Holm over the tasks, per-seed t-tests.

Every final run of an arm is one seed scored on the study's full test query set, so each query's
score is known per seed; :mod:`multiret.report.significance` holds the statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from multiret.errors import UserError
from multiret.report.compare import RunResult, table
from multiret.report.significance import (
    BootstrapResult,
    PerSeedResult,
    SeedScores,
    hierarchical_bootstrap,
    holm,
    per_seed_test,
    run_query_scores,
    seed_scores,
)

RESAMPLES = 10_000  # the p-value's floor is 1 / (RESAMPLES + 1)


@dataclass(frozen=True)
class PairTest:
    """One row of the page: A − B on a task or the average, its bootstrap, Holm-adjusted p (tasks only) and per-seed test."""

    a: str
    b: str
    row: str
    bootstrap: BootstrapResult
    holm_p: float | None
    per_seed: PerSeedResult | None


def arm_scores(runs: Sequence[RunResult], label: str, metric: str, ks: Sequence[int]) -> SeedScores:
    """seed → task → query → ``metric`` of one column's runs, from their own guess and gold files."""
    return seed_scores([(r.seed, run_query_scores(r.source, r.tasks, metric, ks)) for r in runs if r.label == label], label)


def pair_tests(runs: Sequence[RunResult], pairs: Sequence[tuple[str, str]], metric: str, ks: Sequence[int],
               resamples: int = RESAMPLES) -> list[PairTest]:
    """For each pair of columns, a row per task (Holm-adjusted over the tasks) and one on the average (the pair's main test)."""
    rows, _ = table(runs, metric)
    tasks = rows[:-1]
    results = []
    for a_label, b_label in pairs:
        a, b = arm_scores(runs, a_label, metric, ks), arm_scores(runs, b_label, metric, ks)
        try:
            per_task = [hierarchical_bootstrap(a, b, [task], resamples=resamples) for task in tasks]
            average = hierarchical_bootstrap(a, b, tasks, resamples=resamples)
        except UserError as error:
            raise UserError(f"paired test {a_label} − {b_label}, {metric}: {error}") from error
        adjusted = holm([result.p_value for result in per_task])
        results += [PairTest(a_label, b_label, task, result, p, per_seed_test(a, b, [task]))
                    for task, result, p in zip(tasks, per_task, adjusted)]
        results.append(PairTest(a_label, b_label, "average", average, None, per_seed_test(a, b, tasks)))
    return results
