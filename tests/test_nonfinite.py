"""A non-finite step never reaches the weights: every method, through a real Trainer, in fp32 and bf16 autocast.

:func:`poison_task_loss` and :func:`fit_tiny` are reusable: any test can train the tiny T5 for
a few steps with one task's loss made NaN or inf on chosen steps.
"""

import copy
import math
from collections.abc import Collection
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from multiret.mtl.base import GradientMethod, NonFiniteTrainingError
from multiret.mtl.buffers import nonzero_rows

from helpers import METHODS, tiny_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's operations are too small to split: a second thread only waits on the first (on a busy
    2-core machine a run took 58 s with two threads against 4 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def poison_task_loss(model: L.LightningModule, task: str, steps: Collection[int], factor: float) -> None:
    """Multiply ``task``'s loss by ``factor`` (nan or inf) on the given optimizer steps (``trainer.global_step``):
    the loss and the gradients of that task's backward become non-finite."""
    clean = model.task_loss

    def task_loss(batch):
        loss = clean(batch)
        return loss * factor if batch.task == task and model.trainer.global_step in steps else loss

    model.task_loss = task_loss


class MemoryLogger(Logger):
    """Keeps every logged metric in a list, as a real logger receives them."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict[str, float]] = []

    name = "memory"
    version = 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append(dict(metrics))


class StepRecorder(Callback):
    """Weights, optimizer state, method state and learning-rate step before and after every training step."""

    def __init__(self):
        self.before: list[dict] = []
        self.after: list[dict] = []
        self.module: L.LightningModule | None = None

    def snapshot(self, trainer, module):
        self.module = module
        method = next(c for c in trainer.callbacks if isinstance(c, GradientMethod))
        return {
            "weights": {name: p.detach().clone() for name, p in module.named_parameters()},
            "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
            "method": copy.deepcopy(method.state_dict()),
            "schedule": trainer.lr_scheduler_configs[0].scheduler.last_epoch,
        }

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before.append(self.snapshot(trainer, module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self.snapshot(trainer, module))


def fit_tiny(out: Path, model_dir: Path, kilt_dir: Path, tasks: dict, *overrides: str, precision: str = "32-true",
             poison: tuple[str, Collection[int], float] | None = None, callbacks: tuple[Callback, ...] = (),
             logger: Logger | None = None):
    """Train the tiny T5 (config of the end-to-end tests plus ``overrides``) with a real Trainer; returns the model
    and the method callback. ``poison``: (task, steps, factor) for :func:`poison_task_loss`."""
    cfg = tiny_config(out, model_dir, kilt_dir, tasks, *overrides)
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)
    method = instantiate(cfg.method)
    if poison is not None:
        poison_task_loss(model, *poison)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=cfg.trainer.max_steps, logger=logger or False,
        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[method, *callbacks],
    )
    trainer.fit(model, datamodule=datamodule)
    return model, method


def same(a, b) -> bool:
    """Equal to the bit: tensors, and dicts, lists and numbers holding them."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


COUNTERS = ("step", "nonfinite_steps", "nonfinite_streak")


# every method in both precisions, each with NaN in one and inf in the other (so every method meets both, and
# so does every precision): a pairwise cover that keeps the test to 12 short runs
CASES = [(method, precision, math.nan if (i + j) % 2 else math.inf)
         for i, method in enumerate(METHODS) for j, precision in enumerate(["32-true", "bf16-mixed"])]


@pytest.mark.parametrize("method,precision,factor", CASES, ids=[f"{m}-{p}-{f}" for m, p, f in CASES])
def test_a_non_finite_step_is_skipped_and_a_run_of_them_stops_training(
    tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, method, precision, factor
):
    """Task `el` is poisoned on step 1 (skipped), step 2 is clean (updates), steps 3 and 4 are poisoned: with
    max_nonfinite_steps=2 the run stops at step 4, with the weights of before step 3."""
    steps, logger = StepRecorder(), MemoryLogger()
    with pytest.raises(NonFiniteTrainingError, match=(
        r"training stopped at step 4: 2 steps in a row had a non-finite loss of task\(s\) \['el'\]; their updates "
        r"were skipped, so the weights are still finite \(those after step 2\)\. .*method\.max_nonfinite_steps=2"
    )):
        fit_tiny(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, f"method={method}", "method.max_nonfinite_steps=2",
                 "trainer.max_steps=8", precision=precision, poison=("el", {1, 3, 4}, factor), callbacks=(steps,),
                 logger=logger)
    assert len(steps.after) == 4  # steps 0-3 ended; step 4 raised
    for skipped in (1, 3):
        before, after = steps.before[skipped], steps.after[skipped]
        assert same(before["weights"], after["weights"]), f"step {skipped} changed the weights"
        assert same(before["optimizer"], after["optimizer"]), f"step {skipped} changed the optimizer state"
        assert after["schedule"] == before["schedule"], f"step {skipped} advanced the learning-rate schedule"
        assert same({k: v for k, v in before["method"].items() if k not in COUNTERS},
                    {k: v for k, v in after["method"].items() if k not in COUNTERS}), f"step {skipped} moved the method"
        assert after["method"]["nonfinite_steps"] == before["method"]["nonfinite_steps"] + 1  # checkpointed state
    for clean in (0, 2):
        before, after = steps.before[clean], steps.after[clean]
        assert not same(before["weights"], after["weights"]), f"step {clean} did not update"
        assert after["schedule"] == before["schedule"] + 1
    assert steps.after[2]["method"]["nonfinite_streak"] == 0  # a finite step ends the run of bad ones
    weights = {name: p.detach() for name, p in steps.module.named_parameters()}
    assert same(steps.before[3]["weights"], weights)  # step 4 raised before its optimizer could move anything
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    logged = [row["mtl/nonfinite_steps"] for row in logger.rows if "mtl/nonfinite_steps" in row]
    # the base writes each step's values at once, so the step that stops training is logged too
    assert [v for i, v in enumerate(logged) if i == 0 or v != logged[i - 1]] == [0.0, 1.0, 2.0, 3.0]


def test_a_nan_gradient_row_of_an_embedding_table_counts_as_touched():
    grads = torch.zeros(4, 3)
    grads[1, 2] = math.nan
    grads[3, 0] = -math.inf
    assert nonzero_rows(grads).tolist() == [False, True, False, True]
