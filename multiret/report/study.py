"""`multiret study select`: the tuned settings of every arm of a study, saved as experiment configs.

A study tunes each arm with one Hydra multirun over a declared grid on the dev split
(``ROOT/tune/<arm>/<job>/``, each job a run folder with ``.hydra/overrides.yaml``). A trial is
one job, or, for the task-specific arm (``job_type: task-specific``), the jobs that share every
swept value but ``data.task_names``, scored by the mean over tasks. The trial with the best dev
average R-precision (ties: the first in folder order) becomes ``<out>/<arm>.yaml``, an experiment
rebuilt from its overrides minus the plumbing, so that the final runs need no search.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from multiret.atomic import atomic_write_text
from multiret.configs import config_dir
from multiret.data.jsonl import read_json
from multiret.errors import UserError

TASK_SPECIFIC = "task-specific"
SCORE_METRIC = "Rprec"
# set by the study itself per stage, not tuned (the dev stages search a sub-corpus, the final runs the full corpus)
PLUMBING_KEYS = {"seed", "resume", "data.eval_split", "data.corpus_max_pages", "task_name", "job_type"}


@dataclass(frozen=True)
class Job:
    """One tuning job: its folder, its overrides (as Hydra wrote them), its config and dev metrics."""

    folder: Path
    overrides: tuple[str, ...]
    config: dict[str, Any]
    metrics: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Trial:
    """One point of an arm's grid: its settings (override key → value text), its jobs and dev score."""

    settings: dict[str, str]
    jobs: tuple[Job, ...]
    score: float


def natural_key(path: Path) -> list[Any]:
    """Sort key that orders Hydra's job folders 0, 1, …, 10 as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def is_plumbing(key: str, task_specific: bool) -> bool:
    """Overrides the study sets per stage (seeds, splits, folders, Hydra itself) rather than tunes."""
    head = re.split(r"[./]", key.lstrip("+~"), maxsplit=1)[0]
    return head in ("hydra", "paths") or key.lstrip("+~") in PLUMBING_KEYS or (task_specific and key.lstrip("+~") == "data.task_names")


def read_job(folder: Path) -> Job:
    """A finished tuning job; a job without its dev metrics is an error (the trial would be scored on fewer tasks)."""
    metrics_path = folder / "eval" / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{folder}: tuning job without eval/metrics.json (unfinished or failed); rerun the tune stage for it")
    if not (folder / "config.yaml").is_file():
        raise UserError(f"{folder}: tuning job without config.yaml; is it a multiret run folder?")
    overrides = OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "overrides.yaml"))
    config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    return Job(folder, tuple(str(o) for o in overrides), config, read_json(metrics_path))


def job_scores(job: Job) -> dict[str, float]:
    """Dev R-precision of each of the job's tasks."""
    try:
        return {task: float(values[SCORE_METRIC]) for task, values in job.metrics.items()}
    except KeyError as error:
        raise UserError(f"{job.folder / 'eval' / 'metrics.json'}: no {SCORE_METRIC} for a task ({error})") from error


def arm_trials(arm_dir: Path) -> list[Trial]:
    """The arm's trials in folder order, each scored by its dev average R-precision over tasks."""
    jobs = [read_job(f) for f in sorted((p.parent.parent for p in arm_dir.glob("*/.hydra/overrides.yaml")), key=natural_key)]
    if not jobs:
        raise UserError(f"{arm_dir}: no tuning job (a folder with .hydra/overrides.yaml)")
    task_specific = any(j.config.get("job_type") == TASK_SPECIFIC for j in jobs)
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        key = tuple(o for o in job.overrides if not is_plumbing(o.split("=", 1)[0], task_specific))
        groups.setdefault(key, []).append(job)
    tasks = sorted({t for j in jobs for t in j.metrics})
    trials = []
    for key, members in groups.items():
        scores: dict[str, float] = {}
        for job in members:
            scores.update(job_scores(job))
        missing = sorted(set(tasks) - set(scores))
        if missing:
            raise UserError(
                f"{arm_dir}: the trial {' '.join(key) or '(no swept value)'} (jobs {', '.join(j.folder.name for j in members)}) "
                f"has no job for task(s) {missing}; rerun those jobs of the tune stage"
            )
        settings = dict(o.split("=", 1) for o in key)
        trials.append(Trial(settings, tuple(members), statistics.fmean(scores[t] for t in tasks)))
    return trials


def best_trial(trials: list[Trial]) -> int:
    """Index of the best dev score; ties go to the first trial in folder order."""
    return max(range(len(trials)), key=lambda index: trials[index].score)  # max keeps the first of equals


def grid_edges(trials: list[Trial], chosen: int) -> list[str]:
    """The swept numeric settings whose chosen value is the smallest or largest of a grid of three or more values: the
    best may lie beyond it, so the grid should be widened on that side (a grid of two values has no inside)."""
    edges = []
    for key, text in trials[chosen].settings.items():
        values = {t.settings[key] for t in trials if key in t.settings}
        try:
            numbers = sorted(float(v) for v in values)
        except ValueError:
            continue
        if len(set(numbers)) > 2 and float(text) in (numbers[0], numbers[-1]):
            edges.append(key)
    return edges


def yaml_value(value: Any) -> str:
    """One value in YAML flow style, on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def experiment_text(arm: str, source: Path, trials: list[Trial], chosen: int) -> str:
    """The `# @package _global_` experiment of the chosen trial, every line commented."""
    trial = trials[chosen]
    swept = {k for k in trial.settings if len({t.settings.get(k) for t in trials}) > 1}
    why = f"chosen on dev: trial {chosen + 1} of {len(trials)} (dev R-prec {trial.score:.3f})"
    includes, defaults, nested = [], [], {}
    parser = OverridesParser.create()
    for setting, value in trial.settings.items():
        override = parser.parse_overrides([f"{setting}={value}"])[0]
        key = override.key_or_group
        comment = why if setting in swept else "fixed for every trial of this arm"  # the setting as written: ++key too
        if key == "experiment":  # Hydra wants every override after the configs a defaults list includes
            includes.append(f"  - /experiment/{override.value()}  # {comment}")
            continue
        if "." not in key and (config_dir() / key).is_dir():
            defaults.append(f"  - override /{key}: {override.value()}  # {comment}")
            continue
        node = nested
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = (override.value(), comment)
    config = trial.jobs[0].config
    lines = [
        "# @package _global_",
        f"# Generated by `multiret study select` from {source}: the tuned settings of arm {arm}.",
        "# Do not edit by hand: rerun `multiret study select` (scores of every trial: selection.json beside the tune runs).",
    ]
    if includes or defaults:
        lines += ["defaults:", *includes, *defaults]
    lines += [
        "",
        f"task_name: {yaml_value(arm)}  # run folder and W&B group: the arm",
        f"job_type: {yaml_value(config.get('job_type', 'multitask'))}  # W&B job type of the arm's runs",
        *nested_lines(nested, 0),
    ]
    return "\n".join(lines) + "\n"


def nested_lines(node: dict[str, Any], depth: int) -> list[str]:
    """Nested keys of dotted overrides, each with its comment (a parent: the settings it groups)."""
    lines = []
    for key, value in node.items():
        if isinstance(value, dict):
            lines.append(f"{'  ' * depth}{key}:  # {key} settings of the chosen trial")
            lines += nested_lines(value, depth + 1)
        else:
            lines.append(f"{'  ' * depth}{key}: {yaml_value(value[0])}  # {value[1]}")
    return lines


def tune_arms(tune: Path) -> list[Path]:
    """The arm folders of a tune folder: those holding at least one Hydra job."""
    return sorted(p for p in tune.iterdir() if p.is_dir() and any(p.glob("*/.hydra/overrides.yaml"))) if tune.is_dir() else []


def select(tune: Path, out: Path) -> dict[str, Any]:
    """Choose every arm's trial, write ``<out>/<arm>.yaml`` and ``<tune>/selection.json``; returns the selection."""
    arms = tune_arms(tune)
    if not arms:
        raise UserError(f"{tune}: no arm folder with tuning jobs (<arm>/<job>/.hydra/overrides.yaml)")
    selection: dict[str, Any] = {}
    for arm_dir in arms:
        trials = arm_trials(arm_dir)
        chosen = best_trial(trials)
        path = out / f"{arm_dir.name}.yaml"
        atomic_write_text(path, experiment_text(arm_dir.name, Path(tune.name) / arm_dir.name, trials, chosen))
        selection[arm_dir.name] = {
            "metric": f"dev average {SCORE_METRIC}",
            "chosen": chosen,
            "at_grid_edge": grid_edges(trials, chosen),
            "experiment": str(path),
            "trials": [{"settings": t.settings, "score": t.score, "jobs": [j.folder.name for j in t.jobs]} for t in trials],
        }
    atomic_write_text(tune / "selection.json", json.dumps(selection, indent=2))
    return selection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiret study select", description=__doc__.split("\n\n")[0])
    parser.add_argument("tune", type=Path, help="the study's tune folder: <arm>/<job>/ run folders of one multirun per arm")
    parser.add_argument("--out", type=Path, default=config_dir() / "experiment" / "vital_study",
                        help="folder for the <arm>.yaml experiments (use them as experiment=vital_study/<arm>)")
    args = parser.parse_args(argv)
    selection = select(args.tune, args.out)
    for arm, entry in selection.items():
        trial = entry["trials"][entry["chosen"]]
        print(f"{arm}: trial {entry['chosen'] + 1} of {len(entry['trials'])}, dev R-prec {trial['score']:.3f}: "
              f"{' '.join(f'{k}={v}' for k, v in trial['settings'].items())} → {entry['experiment']}")
        for key in entry["at_grid_edge"]:
            print(f"{arm}: {key}={trial['settings'][key]} is at the edge of its grid; widen the grid on that side and tune again")
    print(f"wrote {args.tune / 'selection.json'}")
    return 0
