"""Re-running a job in its own folder (``resume=true``): a finished run is recognised, an interrupted one continues.

Studies and sweeps give every run a fixed folder (``hydra.run.dir`` / ``hydra.sweep.subdir``)
so that an interrupted study re-runs only what is missing: a folder whose ``eval/metrics.json``
exists is done, and a training that stopped part-way continues from ``checkpoints/last.ckpt``
(Lightning restores the optimizer, the schedule, the batch stream and the gradient method, so the
result is the one an uninterrupted run gives). A folder that holds another config is refused.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from multiret.errors import UserError
from multiret.eval.retrieval import saved_results


def finished_results(cfg: DictConfig) -> dict[str, dict[str, float]] | None:
    """The scores of the run this folder already finished, or None when there is none (or ``resume`` is off)."""
    out = Path(cfg.paths.output_dir)
    if not cfg.get("resume") or not (out / "config.yaml").is_file():
        return None
    check_same_config(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return saved_results(out / "eval") if "evaluate" in cfg.stages else None


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """``ckpt_path`` if given, else with ``resume=true`` the folder's ``last.ckpt`` when an earlier attempt wrote one."""
    if cfg.ckpt_path or not cfg.get("resume"):
        return cfg.ckpt_path
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


def check_same_config(saved: Path, current: str) -> None:
    """Refuse to resume a folder whose recorded config differs from this job's, naming the first difference."""
    before = saved.read_text()
    if before == current:
        return
    changed = [line for line in difflib.unified_diff(before.splitlines(), current.splitlines(), lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    raise UserError(
        f"{saved.parent}: resume=true, but this folder ran another config ({'; '.join(changed[:2])}); "
        f"use another run folder, or delete this one to start it again"
    )
