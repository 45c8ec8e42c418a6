"""`multiret study report`: a study's results page, generated from its run folders.

Reads ``ROOT/tune`` (trials and the chosen settings), ``ROOT/final`` (test-split runs over
seeds: the learning curves their validation while training logged, the table, paired tests over seeds and queries,
the specialisation of naive vs TACO measured on their seed-13 checkpoints, the task-gradient
cosines their CSV logs hold) and every run's ``wall_seconds.json``; a part not there yet is
stated as missing. ROOT may also be the data folder `multiret study collect` wrote (:mod:`multiret.report.study_collect`).
The rendering is :mod:`multiret.report.study_page` and :mod:`multiret.report.compare`.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from multiret.atomic import atomic_write_text
from multiret.data.jsonl import read_json
from multiret.errors import UserError
from multiret.eval.curves import run_curve
from multiret.experiment.analyze import specialization
from multiret.mtl.base import method_id
from multiret.report import study_page
from multiret.report.compare import TASK_SPECIFIC, RunResult, load_runs, markdown, metric_ks, plot, table
from multiret.report.curves import arm_curves, mean_curve, plot_arm_curves
from multiret.report.study import arm_trials, best_trial, natural_key, tune_arms
from multiret.report.study_tests import RESAMPLES, pair_tests

METRICS = ("Rprec", "recall@5")
STAGES = ("tune", "final")
COSINE_PREFIX = "mtl/cosine/"
SPECIALIZATION_SEED = 13
SPECIALIZATION = "specialization"  # a data folder's measured specialisation (`multiret study collect`): its JSON and chart


def missing(what: str, where: Path) -> str:
    return f"*Missing: {what} (nothing under {where} yet).*\n"


def tuning(tune: Path) -> str:
    """The tuning section: every arm's trials and the one ``multiret study select`` chooses."""
    arms = tune_arms(tune)
    if not arms:
        return missing("the tuning runs", tune)
    selection, problems = {}, []
    for arm_dir in arms:
        try:
            trials = arm_trials(arm_dir)
        except UserError as error:  # an unfinished tuning stage is reported on the page, as any missing part
            problems.append(f"*Incomplete: {error}*\n")
            continue
        selection[arm_dir.name] = {
            "metric": "dev average R-prec", "chosen": best_trial(trials),
            "trials": [{"settings": t.settings, "score": t.score} for t in trials],
        }
    return "\n".join([study_page.tuning_section(selection) if selection else "", *problems])


def validation_curves(final: Path) -> dict[str, list[dict[int, float]]]:
    """Per arm, one curve of ``val/average/Rprec`` by step per seed of its final runs, from their CSV logs.

    A task-specific arm trains one model per task and seed: a seed's curve is the mean over its tasks' models.
    """
    by_seed: dict[str, dict[int, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for config in sorted(final.glob("*/*/config.yaml")) if final.is_dir() else []:
        curve = run_curve(config.parent, METRICS[0])
        if curve:
            by_seed[config.parent.parent.name][int(OmegaConf.load(config).seed)].append(curve)
    return {arm: [mean_curve(runs) for _, runs in sorted(seeds.items())] for arm, seeds in sorted(by_seed.items())}


def run_cosines(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per task pair, the cosines a run's CSV logs hold by step (later logger versions, after a resume, win)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=natural_key_of_parent):
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                for column, value in row.items():
                    if column.startswith(COSINE_PREFIX) and value not in ("", None):
                        series[column.removeprefix(COSINE_PREFIX)][int(row["step"])] = float(value)
    return dict(series)


def natural_key_of_parent(path: Path) -> list[Any]:
    return natural_key(path.parent)


def invocations(log: Path) -> list[tuple[str, str, float]]:
    """The script's invocations (``<start> <end> <seconds>`` per line, written on exit, interrupted ones included)."""
    if not log.is_file():
        return []
    rows = []
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            raise UserError(f"{log}:{number}: expected '<start> <end> <seconds>', got {line!r}")
        rows.append((parts[0], parts[1], float(parts[2])))
    return rows


def wall_times(root: Path) -> dict[str, dict[str, float]]:
    """Per arm and stage, the summed ``total`` of every run's ``wall_seconds.json``."""
    wall: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for stage in STAGES:
        for path in sorted((root / stage).rglob("wall_seconds.json")) if (root / stage).is_dir() else []:
            arm = path.relative_to(root / stage).parts[0]
            wall[arm][stage] += float(read_json(path)["total"])
    return {arm: dict(by_stage) for arm, by_stage in sorted(wall.items())}


def arm_of(run: RunResult, final: Path) -> str:
    return Path(run.source).relative_to(final).parts[0]


def settings(runs: list[RunResult], final: Path) -> dict[str, dict[str, str]]:
    """Per arm, the settings its final runs share (and every seed they ran)."""
    rows: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for run in runs:
        cfg = OmegaConf.load(Path(run.source) / "config.yaml")
        row = rows[arm_of(run, final)]
        row["method"].add(method_id(cfg))
        row["prompt"].add(str(cfg.prompt.get("kind", "–")))
        row["steps"].add(str(cfg.trainer.max_steps))
        row["seeds"].add(str(cfg.seed))
        pages = cfg.data.get("corpus_max_pages", "–")
        row["corpus pages"].add("all" if pages is None else str(pages))
        row["eval split"].add(str(cfg.data.eval_split))
    return {arm: {k: ", ".join(sorted(v, key=lambda x: (len(x), x))) for k, v in row.items()} for arm, row in sorted(rows.items())}


def seed_checkpoint(final: Path, arm: str) -> Path | None:
    """The seed-13 final run's last checkpoint of an arm, if there is one."""
    for config in sorted((final / arm).glob("*/config.yaml")):
        checkpoint = config.parent / "checkpoints" / "last.ckpt"
        if OmegaConf.load(config).get("seed") == SPECIALIZATION_SEED and checkpoint.is_file():
            return checkpoint
    return None


def final_sections(root: Path, figures: Path, page: Path, roles: dict[str, str], pairs: list[tuple[str, str]],
                   batches: int) -> tuple[str, list[str], dict[str, float], dict, dict | None]:
    """The settings, then the table, charts, paired tests, specialisation and cosines of the final runs."""
    final = root / "final"
    runs = load_runs([final]) if final.is_dir() and any(final.rglob("eval/metrics.json")) else []
    if not any(r.job_type != TASK_SPECIFIC for r in runs):
        text = missing("the final multitask test-split runs", final)
        return text, [text], {}, {}, None
    label = {arm_of(r, final): r.label for r in runs}
    figures_link = os.path.relpath(figures, page.parent)
    sections = ["## Test split (mean ± std over seeds)\n"]
    averages, per_arm = {}, defaultdict(dict)
    for metric in METRICS:
        rows, values = table(runs, metric)
        for arm, lab in label.items():
            per_arm[arm][metric] = values[lab]
        sections.append(markdown(rows, values, metric))
        name = f"final-{metric.replace('@', '_at_')}.png"
        plot(rows, values, metric, figures / name)
        sections.append(f"![{metric} per task, error bars: std over seeds]({figures_link}/{name})\n")
        if metric == "Rprec":
            averages = {arm: statistics.fmean(values[lab]["average"]) for arm, lab in label.items() if values[lab].get("average")}
    main_arms = [roles[role] for role in ("naive", "TACO", "task-specific")]
    tasks = [row for row in rows if row != "average"]
    sections[1:1] = ["### Summary: one row per arm\n", study_page.summary_section(per_arm, tasks, main_arms)]
    sections.append("## Paired significance (hierarchical bootstrap over seeds and queries)\n")
    sections.append(study_page.paired_intro(RESAMPLES))
    wanted = [(a, b) for a, b in pairs if a in label and b in label]
    absent = [f"{a} − {b}" for a, b in pairs if (a, b) not in wanted]
    if absent:
        sections.append(f"*Missing: no final runs for the pair(s) {', '.join(absent)}.*\n")
    tests = {}
    role_of = {label[arm]: role for role, arm in roles.items() if arm in label}
    for metric in METRICS:
        try:
            results = pair_tests(runs, [(label[a], label[b]) for a, b in wanted], metric, metric_ks(METRICS))
        except UserError as error:  # e.g. seeds scored on different query samples: stated on the page, as a missing part
            sections.append(f"*Not tested: {error}.*\n")
            continue
        sections.append(study_page.paired_table(results, metric))
        tests.update({(role_of[r.a], role_of[r.b]): r for r in results
                      if metric == "Rprec" and r.row == "average" and r.a in role_of and r.b in role_of})
    sections.append("## Specialisation: naive vs TACO (importance measured on held-out batches)\n")
    sections.append(specialization_section(final, roles, figures, figures_link, batches))
    sections.append("## Task-gradient cosines over training\n")
    cosine_text, naive_cosines = cosine_sections(final, label, roles, figures, figures_link)
    sections.append(cosine_text)
    return study_page.settings_section(settings(runs, final)), sections, averages, tests, naive_cosines


def specialization_section(final: Path, roles: dict[str, str], figures: Path, link: str, batches: int) -> str:
    """The specialisation of naive vs TACO: measured on their checkpoints, or as a data folder holds it."""
    collected = final.parent / SPECIALIZATION
    checkpoints = {role: seed_checkpoint(final, roles[role]) for role in ("naive", "TACO")}
    absent = [f"{role} ({roles[role]})" for role, path in checkpoints.items() if path is None]
    if (collected / "specialization.json").is_file():
        summary, batches = read_json(collected / "specialization.json"), read_json(collected / "settings.json")["batches"]
        for name in ("specialization.json", "specialization.png"):
            shutil.copyfile(collected / name, figures / name)
    elif absent:
        return f"*Missing: no seed-{SPECIALIZATION_SEED} final checkpoint for {', '.join(absent)}.*\n"
    else:
        summary = specialization(list(checkpoints.values()), figures, batches, measure=True, low_entropy=0.5)
    tasks = next(iter(summary.values()))["tasks"]
    lines = [f"`multiret analyze specialization --measure --batches {batches}` on the seed-{SPECIALIZATION_SEED} checkpoints.", "",
             "| run | mean entropy | share with entropy < 0.5 | " + " | ".join(f"share of {t}" for t in tasks) + " |",
             "|---" * (3 + len(tasks)) + "|"]
    for name, row in summary.items():
        shares = " | ".join(f"{row['per_task_share'][t]:.1%}" for t in tasks)
        lines.append(f"| {name} | {row['mean_entropy']:.3f} | {row['low_entropy_share']:.1%} | {shares} |")
    lines += ["", f"![entropy histograms]({link}/specialization.png)", ""]
    return "\n".join(lines)


def cosine_sections(final: Path, label: dict[str, str], roles: dict[str, str], figures: Path,
                    link: str) -> tuple[str, tuple[str, dict] | None]:
    """The cosine table of every arm that logged them, a chart per arm, and the stats the diagnostic reads (naive's, else TACO's)."""
    stats = {}
    text = []
    for arm, lab in sorted(label.items()):
        if lab == TASK_SPECIFIC:
            continue
        runs = [c for c in (run_cosines(f.parent) for f in sorted((final / arm).glob("*/config.yaml"))) if c]
        if not runs:
            continue
        stats[arm] = study_page.cosine_stats(runs)
        name = f"cosines-{arm}.png"
        pairs = sorted(stats[arm])
        study_page.plot_series({p: study_page.mean_series([r[p] for r in runs if p in r]) for p in pairs},
                               f"{arm}: task-gradient cosine (mean over seeds)", figures / name, zero_line=True)
        text.append(f"![{arm} cosines]({link}/{name})\n")
    if not stats:
        return f"*Missing: no `{COSINE_PREFIX}*` column in the final runs' CSV logs.*\n", None
    silent = [a for a, lab in sorted(label.items()) if lab != TASK_SPECIFIC and a not in stats]
    if silent:
        text.append(f"*No cosines logged by {', '.join(silent)} (a method that never computes per-task gradients, e.g. naive).*\n")
    source = next((roles[r] for r in ("naive", "TACO") if roles[r] in stats), next(iter(stats)))
    return study_page.cosine_section(stats) + "\n" + "\n".join(text), (source, stats[source])


def report(root: Path, page: Path, figures: Path, roles: dict[str, str], extra_pairs: list[tuple[str, str]], batches: int) -> str:
    """The whole page (also written to ``page``, its charts to ``figures``)."""
    if not root.is_dir():
        raise UserError(f"{root}: no such study folder (give the ROOT that holds tune/ and final/)")
    figures.mkdir(parents=True, exist_ok=True)
    link = os.path.relpath(figures, page.parent)
    pairs = [(roles["TACO"], roles["naive"]), (roles["TACO"], roles["task-specific"]), (roles["naive"], roles["task-specific"]),
             *extra_pairs]
    sections = [
        "# Results: the vital study",
        "",
        f"*Generated by `multiret study report {root}`; do not edit by hand, rerun the command.*",
        "",
    ]
    settings_text, final_text, averages, tests, cosines = final_sections(root, figures, page, roles, pairs, batches)
    sections += ["## Settings of the final runs\n", settings_text,
                 "## What the numbers say\n", study_page.conclusions(averages, roles, tests, cosines)]
    sections += ["## Tuning on dev\n", tuning(root / "tune")]
    sections.append("## Learning curves (validation while training, mean ± std over seeds)\n")
    curves = validation_curves(root / "final")
    summary = {arm: points for arm, points in arm_curves(curves).items() if points}
    if summary:
        plot_arm_curves(summary, {arm: len(curves[arm]) for arm in summary}, f"val/average/{METRICS[0]}", figures / "curve.png")
        sections += [study_page.curve_section(summary, {arm: len(curves[arm]) for arm in summary}),
                     f"![learning curves, band: ± std over seeds]({link}/curve.png)\n"]
    else:
        sections.append(missing("validation logs (val/average/Rprec in csv/) of the final runs", root / "final"))
    sections += final_text
    sections.append("## Measured wall time\n")
    wall = wall_times(root)
    sections.append(study_page.wall_section(wall, STAGES) if wall else missing("wall_seconds.json of any run", root))
    sections.append(study_page.invocations_sentence(invocations(root / "invocations.log")))
    text = "\n".join(sections)
    atomic_write_text(page, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiret study report", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the study folder (tune/, final/)")
    parser.add_argument("--out", type=Path, default=Path("docs/results-vital.md"), help="the page to write")
    parser.add_argument("--figures", type=Path, help="folder for the charts (default: <page name without .md>/ beside the page)")
    parser.add_argument("--taco", default="taco", help="the TACO arm (its folder name)")
    parser.add_argument("--naive", default="naive", help="the naive multitask arm")
    parser.add_argument("--task-specific", default="task_specific", help="the task-specific arm")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="another paired test of arm A against arm B (e.g. the prompt ablation); repeatable")
    parser.add_argument("--batches", type=int, default=8, help="held-out batches the specialisation measure uses")
    args = parser.parse_args(argv)
    figures = args.figures or args.out.with_suffix("")
    roles = {"TACO": args.taco, "naive": args.naive, "task-specific": args.task_specific}
    report(args.root, args.out, figures, roles, [tuple(p) for p in args.pair], args.batches)
    print(f"wrote {args.out} and its charts in {figures}")
    return 0
