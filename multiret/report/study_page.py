"""The sections of a study's results page, rendered from numbers (``multiret study report`` reads the runs).

Each function takes what was measured and returns markdown (and, for charts, writes a PNG);
the closing "what the numbers say" sentences are chosen from the same numbers, so the page
never claims what they do not show.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from multiret.eval.figures import new_figure, save_figure
from multiret.report.compare import cell
from multiret.report.study_tests import PairTest

ALPHA = 0.05  # significance level of the page's sentences
Series = Mapping[int, float]  # step -> value


def settings_section(settings: Mapping[str, Mapping[str, str]]) -> str:
    """One row per arm: what its final runs were configured with."""
    columns = ["method", "prompt", "steps", "seeds", "corpus pages", "eval split"]
    lines = ["| arm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {arm} | " + " | ".join(row.get(c, "–") for c in columns) + " |" for arm, row in settings.items()]
    return "\n".join(lines) + "\n"


def summary_section(values: Mapping[str, Mapping[str, Mapping[str, list[float]]]], tasks: Sequence[str], first: Sequence[str]) -> str:
    """One row per arm (``first`` on top): each task's R-precision, then the average R-precision and recall@5, mean ± std over seeds.

    ``values`` maps arm -> metric -> row (a task or ``average``) -> one value per seed; the README quotes these rows verbatim.
    """
    arms = sorted(values, key=lambda arm: (arm not in first, list(first).index(arm) if arm in first else 0, arm))
    header = [*(f"{task} R-prec" for task in tasks), "average R-prec", "average recall@5"]
    lines = ["| arm | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for arm in arms:
        cells = [cell(values[arm]["Rprec"].get(task, [])) for task in tasks]
        cells += [cell(values[arm]["Rprec"].get("average", [])), cell(values[arm]["recall@5"].get("average", []))]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tuning_section(arms: Mapping[str, Mapping]) -> str:
    """Per arm, every trial's settings and dev score, the chosen one in bold, and whether the budgets were equal."""
    counts = {arm: len(entry["trials"]) for arm, entry in arms.items()}
    if len(set(counts.values())) == 1:
        lines = [f"Every arm had the same search: {next(iter(counts.values()))} trials on dev (seed 13).", ""]
    else:
        lines = ["The arms had **different** numbers of trials: " + ", ".join(f"{a} {n}" for a, n in counts.items()) + ".", ""]
    for arm, entry in arms.items():
        trials = entry["trials"]
        keys = list(dict.fromkeys(k for t in trials for k in t["settings"]))
        swept = [k for k in keys if len({t["settings"].get(k) for t in trials}) > 1]
        fixed = " ".join(f"`{k}={trials[0]['settings'][k]}`" for k in keys if k not in swept) or "none"
        lines += [f"**{arm}** ({entry['metric']}; fixed for every trial: {fixed})", "",
                  "| trial | swept settings | dev R-prec |", "|---|---|---|"]
        for index, trial in enumerate(trials):
            settings = " ".join(f"`{k}={trial['settings'].get(k, '–')}`" for k in swept) or "–"
            mark = "**" if index == entry["chosen"] else ""
            lines.append(f"| {mark}{index + 1}{mark} | {settings} | {mark}{trial['score']:.3f}{mark} |")
        lines.append("")
    return "\n".join(lines)


def plot_series(series: Mapping[str, Series], ylabel: str, path: Path, zero_line: bool = False) -> None:
    """One line per label over training steps."""
    figure, axes = new_figure(7)
    for label, points in series.items():
        steps = sorted(points)
        axes.plot(steps, [points[s] for s in steps], marker="o", markersize=3, label=label)
    if zero_line:
        axes.axhline(0.0, color="grey", linewidth=0.8)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize="small")
    save_figure(figure, path)


def curve_section(curves: Mapping[str, Sequence[tuple[int, float, float]]], seeds: Mapping[str, int]) -> str:
    """Per arm (``curves``: ``(step, mean, std)`` over its ``seeds``), the score at step 0, the best step, the last one,
    and whether the score still rises at the end of training (the best is the last: more steps might help)."""
    lines = [("Each final run scores a sample of its evaluation split's queries against a candidate pool fixed for the run "
             "(not the full corpus: higher than the test table) at step 0, every `trainer.val_check_interval` steps and at "
             "the end; the final evaluation uses the last checkpoint, so nothing is chosen on these scores."), "",
             "| arm | seeds | validations | R-prec first (step) | best R-prec (step) | last R-prec (step) | still rising at the end |",
             "|---|---|---|---|---|---|---|"]
    for arm, points in curves.items():
        best = max(points, key=lambda point: point[1])  # max keeps the earliest of equals
        first, last = points[0], points[-1]
        rising = "yes" if best[0] == last[0] else f"no (peak at step {best[0]})"
        lines.append(f"| {arm} | {seeds[arm]} | {len(points)} | {first[1]:.3f} ± {first[2]:.3f} ({first[0]}) "
                     f"| {best[1]:.3f} ± {best[2]:.3f} ({best[0]}) | {last[1]:.3f} ± {last[2]:.3f} ({last[0]}) | {rising} |")
    return "\n".join(lines) + "\n"


def cosine_stats(runs: Sequence[Mapping[str, Series]]) -> dict[str, dict[str, float]]:
    """Per task pair over an arm's runs: mean over runs of each run's mean cosine, and the share of logged steps below 0."""
    pairs = sorted({pair for run in runs for pair in run})
    stats = {}
    for pair in pairs:
        logged = [list(run[pair].values()) for run in runs if run.get(pair)]
        values = [v for run in logged for v in run]
        stats[pair] = {
            "mean": statistics.fmean(statistics.fmean(run) for run in logged),
            "negative_share": sum(v < 0 for v in values) / len(values),
            "logged": len(values),
        }
    return stats


def mean_series(runs: Sequence[Series]) -> dict[int, float]:
    """At each step, the mean over the runs that logged it."""
    steps = sorted({s for run in runs for s in run})
    return {s: statistics.fmean(run[s] for run in runs if s in run) for s in steps}


def cosine_section(stats: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Per arm and pair: mean cosine over seeds and the share of logged steps with a negative cosine."""
    lines = ["| arm | task pair | mean cosine | steps with cosine < 0 | logged values |", "|---|---|---|---|---|"]
    for arm, pairs in stats.items():
        for pair, row in pairs.items():
            lines.append(f"| {arm} | {pair} | {row['mean']:+.3f} | {row['negative_share']:.1%} | {int(row['logged'])} |")
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def wall_section(wall: Mapping[str, Mapping[str, float]], stages: Sequence[str]) -> str:
    """Measured wall time (sum of every run's ``total``) per arm and stage, and of the whole study."""
    lines = ["| arm | " + " | ".join(stages) + " | all |", "|---" * (len(stages) + 2) + "|"]
    for arm, by_stage in wall.items():
        cells = [duration(by_stage[s]) if s in by_stage else "–" for s in stages]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {duration(sum(by_stage.values()))} |")
    totals = {s: sum(by_stage[s] for by_stage in wall.values() if s in by_stage) for s in stages
              if any(s in by_stage for by_stage in wall.values())}
    cells = [duration(totals[s]) if s in totals else "–" for s in stages]
    lines.append("| **all arms** | " + " | ".join(cells) + f" | **{duration(sum(totals.values()))}** |")
    return "\n".join(lines) + "\n"


def invocations_sentence(rows: Sequence[tuple[str, str, float]]) -> str:
    """The study's whole wall clock: the script's invocations, process start-ups and interrupted runs included."""
    if not rows:
        return "The script's invocations were not logged (no invocations.log): the table above is the study's only time.\n"
    total = sum(seconds for _, _, seconds in rows)
    return (f"The script ran {len(rows)} time(s), {duration(total)} of wall clock in all (from {rows[0][0]} to {rows[-1][1]}, "
            "pauses between invocations excluded): the table's run times plus each process's start-up, the selection, "
            "and any run interrupted and redone.\n")


def p_text(p_value: float, floor: float) -> str:
    """A p-value to 4 decimals; at the floor, ``≤`` it (no resample was as extreme: the true p may be lower)."""
    return f"≤ {floor:.4f}" if p_value <= floor else f"{p_value:.4f}"


def paired_intro(resamples: int) -> str:
    """How the paired tests were made: the test, the correction, the p-value's floor and the alternative."""
    return (f"Each difference A − B is the mean over tasks of each task's mean over queries of the seed-averaged scores. "
            f"Test: a hierarchical bootstrap ({resamples:,} resamples): each resample draws each arm's seeds with replacement, "
            "then each task's queries with replacement, the same queries for both arms (every seed is scored on the full test "
            "query set); the 95% interval is the resampled differences' 2.5 and 97.5 percentiles, the two-sided p the share "
            "of resampled differences, centred on the observed one, at least as far from 0 as it. The p-value cannot go below "
            f"its floor 1/(resamples + 1) = {1 / (resamples + 1):.4f}, written `≤ {1 / (resamples + 1):.4f}`. Correction: "
            "per-task p-values are Holm-adjusted (step-down) within each pair and metric; the average row is the pair's one "
            "main test and is not adjusted. Alternative: per-seed paired differences (seed s of A − seed s of B over the "
            "seeds both arms ran), their mean, a 95% t interval and a one-sample t-test (– below two shared seeds). "
            "With three seeds the bootstrap is calibrated only while the seed-to-seed offsets are small next to the "
            "query-level differences (docs/study.md); the per-seed test is the check.\n")


def paired_table(tests: Sequence[PairTest], metric: str) -> str:
    """One row per pair and task (and the average): the bootstrap's Δ, interval, p and Holm p, then the per-seed test."""
    lines = [f"### paired tests, {metric}", "",
             "| A − B | task | Δ | 95% interval | p | Holm p | seeds | queries | per-seed Δ [95% t interval] | per-seed p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for test in tests:
        boot, seeds = test.bootstrap, test.per_seed
        holm_p = "–" if test.holm_p is None else p_text(test.holm_p, boot.p_floor)
        if seeds is None:
            alternative = "– | –"
        else:
            seed_p = "–" if seeds.p_value != seeds.p_value else f"{seeds.p_value:.4f}"  # NaN: the seeds' differences are equal
            alternative = f"{seeds.difference:+.3f} [{seeds.low:+.3f}, {seeds.high:+.3f}] ({len(seeds.seeds)} seeds) | {seed_p}"
        lines.append(f"| {test.a} − {test.b} | {test.row} | {boot.difference:+.3f} | [{boot.low:+.3f}, {boot.high:+.3f}] "
                     f"| {p_text(boot.p_value, boot.p_floor)} | {holm_p} | {boot.seeds[0]} / {boot.seeds[1]} | {boot.queries} "
                     f"| {alternative} |")
    return "\n".join(lines) + "\n"


def significant(result: PairTest) -> bool:
    return result.bootstrap.p_value < ALPHA and (result.bootstrap.low > 0 or result.bootstrap.high < 0)


def verdict(result: PairTest) -> str:
    """Whether a paired difference is significant: the bootstrap's p and its interval must agree; the per-seed test beside it."""
    boot = result.bootstrap
    shown = p_text(boot.p_value, boot.p_floor)
    interval = (f"{boot.difference:+.3f}, 95% interval [{boot.low:+.3f}, {boot.high:+.3f}], "
                f"hierarchical bootstrap p {shown if shown.startswith('≤') else '= ' + shown}")
    if result.per_seed is not None and result.per_seed.p_value == result.per_seed.p_value:
        interval += f"; per-seed t-test over {len(result.per_seed.seeds)} seeds p = {result.per_seed.p_value:.4f}"
    excludes_zero = boot.low > 0 or boot.high < 0
    if significant(result):
        return f"significant at the 5% level ({interval})"
    if boot.p_value >= ALPHA and not excludes_zero:
        return f"within noise ({interval})"
    return f"borderline: the bootstrap's p and its interval disagree ({interval})"


def conclusions(averages: Mapping[str, float], names: Mapping[str, str], tests: Mapping[tuple[str, str], PairTest],
                measured: tuple[str, Mapping[str, Mapping[str, float]]] | None) -> str:
    """Sentences from the numbers: the ordering of the main arms, each difference's significance, the conflict diagnostic.

    ``names`` maps a role (TACO, naive, task-specific) to its arm; ``tests`` holds average R-prec paired tests by role pair;
    ``measured`` is the arm whose cosine statistics (:func:`cosine_stats`) the diagnostic reads, and those statistics.
    """
    cosine_arm, cosines = measured if measured else (None, None)
    present = {role: arm for role, arm in names.items() if arm in averages}
    lines = []
    if present:
        ordered = sorted(present, key=lambda role: -averages[present[role]])
        text = f"{ordered[0]} ({averages[present[ordered[0]]]:.3f})"
        for before, role in zip(ordered, ordered[1:]):
            same = f"{averages[present[before]]:.3f}" == f"{averages[present[role]]:.3f}"
            text += f" {'=' if same else '>'} {role} ({averages[present[role]]:.3f})"
        lines.append(f"- Test average R-precision (mean over seeds, 3 decimals) orders the arms {text}.")
    for (a, b), result in tests.items():
        lines.append(f"- {a} − {b}: {verdict(result)}.")
    naive_vs_specific = tests.get(("naive", "task-specific"))
    if cosines:
        negative = [pair for pair, row in cosines.items() if row["mean"] < 0]
        share = max(row["negative_share"] for row in cosines.values())
        lines.append(
            f"- Task-gradient cosines ({cosine_arm} runs): mean per pair from {min(r['mean'] for r in cosines.values()):+.3f} to "
            f"{max(r['mean'] for r in cosines.values()):+.3f}; at most {share:.0%} of logged steps have a negative cosine"
            + (f"; pairs with a negative mean: {', '.join(negative)}." if negative else "; no pair has a negative mean.")
        )
    if cosines is not None and naive_vs_specific is not None:
        boot = naive_vs_specific.bootstrap
        quiet = boot.p_value >= ALPHA and not (boot.low > 0 or boot.high < 0)
        if quiet and not any(row["mean"] < 0 for row in cosines.values()):
            lines.append("- Conflict diagnostic: no pair's gradients point apart on average and naive multitask training is within "
                         "noise of task-specific training, so these tasks show no measurable conflict for a method like TACO to resolve.")
        elif not quiet and boot.difference < 0:
            lines.append("- Conflict diagnostic: naive multitask training is significantly below task-specific training: the "
                         "signature of task conflict that TACO targets, or of each task-specific model seeing its own task "
                         "in every query of a step (the same steps and batch size, one task instead of all); the cosines "
                         "tell the two apart (conflict shows as pairs whose gradients point apart).")
        elif not quiet and boot.difference > 0 and not any(row["mean"] < 0 for row in cosines.values()):
            lines.append("- Conflict diagnostic: naive multitask training is significantly above task-specific training and no "
                         "pair's gradients point apart on average: sharing helps these tasks more than any conflict costs.")
        else:
            lines.append("- Conflict diagnostic: the two signals do not agree (see the cosine table and the naive − task-specific "
                         "test); the page draws no conclusion about conflict.")
    else:
        lines.append("- Conflict diagnostic: missing (it needs the cosines of the final runs and the naive − task-specific test).")
    return "\n".join(lines) + "\n"
