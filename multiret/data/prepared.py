"""What a folder written by ``multiret prepare kilt`` holds, read from its report, for the data config.

``conf/data/kilt.yaml`` sets ``task_names: ${prepared_tasks:}``, so a run trains on the tasks
the folder ``data.root`` holds with no further override (and ``positives_dir:
${prepared_positives:}``, so a folder of ``multiret prepare dpr`` trains on its given positives); this module registers that resolver
on import (the data module imports it, so every entry point has it before a config resolves).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from multiret.data.jsonl import DataFormatError

REPORT = "prepare_report.json"


def read_report(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The prepare report of ``root``, or None if ``root`` was not written by ``multiret prepare kilt``."""
    path = Path(root) / REPORT
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); re-run `multiret prepare kilt`") from None
    if not isinstance(report, dict):
        raise DataFormatError(f"{path}: expected a JSON object; re-run `multiret prepare kilt`")
    return report


def held_tasks(report: dict[str, Any]) -> list[str]:
    """The tasks a prepared folder holds (reports older than ``prepared_tasks`` list this run's tasks only)."""
    return list(report.get("prepared_tasks") or report.get("tasks") or [])


def prepared_tasks(*, _parent_: DictConfig) -> list[str]:
    """Resolver ``${prepared_tasks:}`` in a data config: the tasks its ``root`` holds, in KILT's order.

    With ``root`` still unset it gives no task, so that the missing ``data.root`` is what gets reported.
    """
    if OmegaConf.is_missing(_parent_, "root"):
        return []
    root = str(_parent_.root)
    report = read_report(root)
    if report is None:
        raise FileNotFoundError(
            f"{Path(root) / REPORT}: not found; data=kilt reads the folder `multiret prepare kilt --out` wrote "
            "(set data.root to it), or name the tasks with data.task_names=[...]"
        )
    return held_tasks(report)


def prepared_positives(*, _parent_: DictConfig) -> str | None:
    """Resolver ``${prepared_positives:}``: ``<root>/positives`` when ``root`` holds given positives
    (a folder of ``multiret prepare dpr``), else None (positives come from the gold pages)."""
    if OmegaConf.is_missing(_parent_, "root"):
        return None
    report = read_report(str(_parent_.root))
    return str(Path(str(_parent_.root)) / "positives") if report and report.get("negatives") == "given" else None


def check_prepared(root: str | os.PathLike[str], task_names: Sequence[str], template: str | None) -> None:
    """Fail naming the fix when a run asks a prepared folder for a task it lacks, or for another passage template.

    The folder's BM25 negatives were mined with its template; training with another would
    feed the model passages unlike those its negatives were chosen from.
    """
    report = read_report(root)
    if report is None:
        return
    where = Path(root) / REPORT
    held = held_tasks(report)
    missing = [t for t in task_names if t not in held]
    if missing:
        raise ValueError(
            f"data.task_names asks for {', '.join(missing)}, but {root} holds only {', '.join(held) or 'no task'} "
            f"({where}); run `multiret prepare kilt --tasks {','.join(missing)} ...` into the same --out, "
            "or leave data.task_names at its default (every prepared task)"
        )
    settings = report.get("settings") or {}
    if report.get("negatives") == "given":  # `multiret prepare dpr`: no BM25 here, the files' negatives fit any template
        return
    if "passage_template" not in settings:
        raise ValueError(f"{where}: prepared before passage templates were recorded; re-run the same "
                         "`multiret prepare kilt` command (it redoes every step once: the passages are now read with csv quoting)")
    if settings["passage_template"] != template:
        raise ValueError(
            f"data.passage_template={template!r}, but {root} indexed BM25 and mined its negatives with "
            f"{settings['passage_template']!r} ({where}); set data.passage_template to that, or re-run "
            "`multiret prepare kilt ... --passage-template` with yours"
        )


if not OmegaConf.has_resolver("prepared_tasks"):
    OmegaConf.register_new_resolver("prepared_tasks", prepared_tasks)
if not OmegaConf.has_resolver("prepared_positives"):
    OmegaConf.register_new_resolver("prepared_positives", prepared_positives)
