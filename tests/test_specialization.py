"""Task-specialisation analysis: a block only one task touches comes out specialised to that task."""

import json
import math

import pytest
import torch
from torch import nn

from multiret.cli import main as cli
from multiret.data.batches import TaskBatch
from multiret.eval.specialization import (
    importance_entropy,
    measure_importance,
    summarize,
)
from multiret.experiment.run import run

from helpers import tiny_config


def test_entropy_by_hand():
    importance = [torch.tensor([[1.0, 1.0, 0.0, 3.0], [1.0, 0.0, 0.0, 1.0]])]
    entropy, owner = importance_entropy(importance)
    # columns: (1/2, 1/2) → 1; (1, 0) → 0; untouched → left out; (3/4, 1/4) → H(0.75)/log 2
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    torch.testing.assert_close(entropy, torch.tensor([1.0, 0.0, h], dtype=torch.float64))
    assert owner.tolist() == [0, 0, 0]
    summary = summarize(entropy, owner, ["a", "b"], low=0.5)
    assert summary["parameters"] == 3 and summary["low_entropy_share"] == pytest.approx(1 / 3)
    assert summary["per_task_share"] == {"a": 1.0, "b": 0.0}


class TwoBlocks(nn.Module):
    """Task 0 uses both blocks; task 1 only the shared one, so the private block serves task 0 alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 4)
        self.private = nn.Linear(4, 4)

    def task_loss(self, batch):
        hidden = self.shared(batch.query["x"])
        if batch.task == "a":
            hidden = self.private(hidden)
        return hidden.pow(2).mean()


class Batches:
    def batch(self, step):
        generator = torch.Generator().manual_seed(step)
        return [TaskBatch(name, {"x": torch.randn(8, 4, generator=generator)}, {}) for name in ["a", "b"]]


def test_a_block_one_task_touches_comes_out_specialised():
    model = TwoBlocks()
    importance = measure_importance(model, Batches(), steps=3)
    names = [n for n, _ in model.named_parameters()]
    private = [imp for n, imp in zip(names, importance) if n.startswith("private")]
    shared = [imp for n, imp in zip(names, importance) if n.startswith("shared")]
    private_entropy, private_owner = importance_entropy(private)
    shared_entropy, _ = importance_entropy(shared)
    assert private_entropy.max() == 0 and private_owner.unique().tolist() == [0]
    assert shared_entropy.mean() > 0.3
    summary = summarize(*importance_entropy(importance), ["a", "b"])
    assert summary["per_task_share"]["a"] > 0.5


def test_cli_compares_a_taco_run_with_a_measured_naive_run(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, capsys):
    for method in ("taco", "naive"):
        run(tiny_config(tmp_path / method, tiny_t5_dir, kilt_dir, kilt_tasks, f"method={method}", "stages=[train]"))
    out = tmp_path / "analysis"
    code = cli(["analyze", "specialization", str(tmp_path / "taco" / "checkpoints" / "last.ckpt"),
                str(tmp_path / "naive" / "checkpoints" / "last.ckpt"), "--out", str(out), "--batches", "2"])
    assert code == 0
    summary = json.loads((out / "specialization.json").read_text())
    assert [s["method"] for s in summary.values()] == ["taco", "naive"]
    assert all(0 <= s["mean_entropy"] <= 1 and s["tasks"] == ["qa", "el"] for s in summary.values())
    assert (out / "specialization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    measured = tmp_path / "measured"
    assert cli(["analyze", "specialization", str(tmp_path / "taco" / "checkpoints" / "last.ckpt"),
                "--out", str(measured), "--batches", "2", "--measure"]) == 0
    assert json.loads((measured / "specialization.json").read_text())["taco: taco"]["parameters"] > 0
