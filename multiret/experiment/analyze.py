"""`multiret analyze specialization`: how task-specialised a run's parameters are, from its checkpoint.

The measures live in :mod:`multiret.eval.specialization`; this command reads the runs: TACO's
EMA straight from a TACO checkpoint, or importance measured on the run's held-out batches,
with the model and data rebuilt from the run's ``config.yaml`` by the shared stages.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from multiret.atomic import atomic_write_text
from multiret.errors import UserError
from multiret.eval.specialization import importance_entropy, measure_importance, plot_histograms, summarize
from multiret.experiment.stages import build
from multiret.model.loading import load_checkpoint
from multiret.mtl.taco_ema import has_importance_ema, importance_ema_from_state


def checkpoint_importance(path: Path, steps: int, measure: bool = False) -> tuple[list[torch.Tensor], list[str], str]:
    """TACO's EMA from a checkpoint of a TACO method (unless ``measure``); otherwise measured on the run's held-out batches."""
    checkpoint = load_checkpoint(path, "checkpoint")
    state = checkpoint.get("callbacks", {}).get("GradientMethod")
    if state is None:
        raise UserError(f"{path}: not a multiret training checkpoint (no gradient-method state)")
    if has_importance_ema(state) and not measure:
        return importance_ema_from_state(state), list(state["task_names"]), state["method"]
    config_path = path.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: the run's config is needed to measure importance for {state['method']}")
    model, datamodule = build(OmegaConf.load(config_path))
    model.load_state_dict(checkpoint["state_dict"])
    return measure_importance(model, datamodule.heldout_batches(), steps), list(state["task_names"]), state["method"]

def specialization(checkpoints: list[Path], out: Path, batches: int, measure: bool, low_entropy: float) -> dict[str, Any]:
    """Entropy summary per checkpoint, written with the histogram to ``out`` (specialization.json, .png); returned."""
    entropies: dict[str, torch.Tensor] = {}
    summary: dict[str, Any] = {}
    for path in checkpoints:
        importance, tasks, method = checkpoint_importance(path, batches, measure)
        label = f"{method}: {path.parent.parent.name}"
        entropy, owner = importance_entropy(importance)
        entropies[label] = entropy
        summary[label] = {"checkpoint": str(path), "method": method, "tasks": tasks, **summarize(entropy, owner, tasks, low_entropy)}
    out.mkdir(parents=True, exist_ok=True)
    plot_histograms(entropies, out / "specialization.png")
    atomic_write_text(out / "specialization.json", json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multiret analyze specialization",
                                     description="per-parameter task-specialisation entropy (PNG + JSON)")
    parser.add_argument("checkpoints", nargs="+", type=Path, help="training checkpoints (<run>/checkpoints/last.ckpt)")
    parser.add_argument("--out", type=Path, default=Path("specialization"), help="folder for the PNG and JSON")
    parser.add_argument("--batches", type=int, default=8, help="held-out batches measured for non-TACO runs")
    parser.add_argument("--measure", action="store_true",
                        help="measure importance on held-out batches for TACO runs too (the same estimator for every run)")
    parser.add_argument("--low-entropy", type=float, default=0.5, help="entropy below which a parameter counts as specialised")
    args = parser.parse_args(argv)
    summary = specialization(args.checkpoints, args.out, args.batches, args.measure, args.low_entropy)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out / 'specialization.png'} and {args.out / 'specialization.json'}")
    return 0
