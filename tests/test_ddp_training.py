"""Two CPU processes (gloo) train to the same parameters as one process on the same global batch."""

import csv

import pytest
import torch
from transformers import AutoModel

from multiret.experiment.run import run

from helpers import tiny_config


def flat_model(state_dict, prefix="query_encoder.model."):
    return torch.cat([v.flatten().double() for k, v in sorted(state_dict.items()) if k.startswith(prefix)])


@pytest.mark.parametrize("method", ["taco", *(pytest.param(m, marks=pytest.mark.slow)
                                              for m in ("naive", "gradnorm", "pcgrad", "cgd", "uncertainty", "mgda", "cagrad", "imtl_g",
                                                        "aligned_mtl", "dualproj", "random_weights", "nash_mtl",
                                                        "weighted")), "upgrad", "famo"])
def test_two_processes_match_one_process(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, method):
    # Adam divides by sqrt(v) + eps: with the default eps a near-zero gradient's float noise becomes a
    # full-size step of either sign, so 2e-5 apart after 3 steps says nothing about the gradients. A
    # larger eps keeps the update proportional to the gradient, and the bound then checks the sums.
    options = (f"method={method}", "stages=[train]", "trainer.max_steps=3", "optimizer.eps=1e-3",
               "trainer.log_every_n_steps=1")
    run(tiny_config(tmp_path / "one", tiny_t5_dir, kilt_dir, kilt_tasks, *options))
    run(tiny_config(tmp_path / "two", tiny_t5_dir, kilt_dir, kilt_tasks, *options,
                    "trainer.devices=2", "trainer.strategy=ddp_spawn"))
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=False)
    two = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=False)
    assert one["global_step"] == two["global_step"] == 3
    start = flat_model({f"query_encoder.model.{k}": v for k, v in AutoModel.from_pretrained(tiny_t5_dir).state_dict().items()})
    a, b = flat_model(one["state_dict"]), flat_model(two["state_dict"])
    assert (a - b).norm() / a.norm() <= 1e-6  # float32 sums in another order, nothing more
    assert (a - start).norm() > 1000 * (a - b).norm()  # while training moved the parameters far more
    # the logged losses are the global batch's (averaged over the processes), not the first process's share
    logged_one, logged_two = (logged_losses(tmp_path / run / "csv" / "version_0" / "metrics.csv") for run in ("one", "two"))
    assert logged_one.keys() == logged_two.keys() and {name for name, _ in logged_one} == {"train/loss", "train/loss/qa", "train/loss/el"}
    for key, value in logged_one.items():
        assert logged_two[key] == pytest.approx(value, rel=1e-5, abs=1e-6)


def logged_losses(metrics_csv) -> dict[tuple[str, int], float]:
    """Every ``train/loss*`` value of a run's metrics.csv, by (name, step)."""
    with open(metrics_csv, newline="") as f:
        return {(name, int(row["step"])): float(value) for row in csv.DictReader(f)
                for name, value in row.items() if name.startswith("train/loss") and value}
