"""Every gradient method under fp16 loss scaling, through a real Trainer on the CPU.

Lightning falls back from ``precision=16-mixed`` to bf16 on a CPU, so these runs pass its
``MixedPrecision("16-mixed", "cpu")`` plugin directly: the same GradScaler path a GPU run takes
(scale the loss, ``unscale_``, ``step``, ``update``), with fp16 autocast on the CPU.
"""

import contextlib

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from multiret.mtl.base import GradientMethod

from helpers import METHODS, tiny_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's operations are too small to split over threads (see test_nonfinite.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScaledFloat32(MixedPrecision):
    """Lightning's fp16 path with its GradScaler, but the forward left in float32: loss scaling alone.

    The scale is a power of two, so scaling the loss, the backward and unscaling are exact in
    float32: a method must then give what it gives in fp32.
    """

    def __init__(self, init_scale: float = 2.0**16) -> None:
        super().__init__("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))

    def forward_context(self):
        return contextlib.nullcontext()


class CombinedGradients(Callback):
    """Each step's gradient as the optimizer gets it from the method (None for a skipped step), before clipping."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor] | None] = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
        self.steps.append(grads or None)


def fit(tmp_path, model_dir, kilt_dir, tasks, method: str, precision: Precision | None, *overrides: str, steps: int = 3):
    """Train the tiny T5 with ``method`` (fp32 when ``precision`` is None); returns the trainer, the method and the
    gradients each step wrote."""
    cfg = tiny_config(tmp_path, model_dir, kilt_dir, tasks, f"method={method}", *overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)
    gradient_method: GradientMethod = instantiate(cfg.method)
    recorded = CombinedGradients()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, plugins=[precision] if precision else None, max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[gradient_method, recorded],
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer, gradient_method, recorded.steps


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    difference = sum(float((a[k].double() - b[k].double()).square().sum()) for k in a) ** 0.5
    return difference / sum(float(b[k].double().square().sum()) for k in b) ** 0.5


# the embedding tables buffered by rows too, so the unscaling of table rows is exercised
ROWS = "++method.row_tracked_tables_from=1"


@pytest.mark.parametrize("method", METHODS)
def test_loss_scaling_gives_every_method_the_fp32_gradient(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, method):
    """With the forward in float32, loss scaling by 2^16 must change nothing: the same gradient every step to the bit,
    and the same task losses (those the rules read)."""
    _, fp32, plain = fit(tmp_path / "fp32", tiny_t5_dir, kilt_dir, kilt_tasks, method, None, ROWS)
    trainer, scaled_method, scaled = fit(tmp_path / "scaled", tiny_t5_dir, kilt_dir, kilt_tasks, method,
                                         ScaledFloat32(), ROWS)
    assert trainer.scaler.get_scale() == 2.0**16  # no step overflowed, so none was skipped
    assert len(scaled) == len(plain) == 3
    for step, (a, b) in enumerate(zip(scaled, plain)):
        assert a is not None and b is not None, f"step {step} was skipped"
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"step {step}: the gradient differs"
    assert torch.equal(scaled_method.task_losses, fp32.task_losses)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_under_fp16_mixed_precision_as_in_fp32(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, method):
    """fp16 autocast with Lightning's GradScaler: the first step's gradient (same weights, same batch) is fp32's up to
    fp16 rounding (1.5% on this model, for naive too; loss-scaled it would be 65536 times larger), and the run trains."""
    _, _, plain = fit(tmp_path / "fp32", tiny_t5_dir, kilt_dir, kilt_tasks, method, None)
    _, half_method, half = fit(tmp_path / "fp16", tiny_t5_dir, kilt_dir, kilt_tasks, method,
                               MixedPrecision("16-mixed", "cpu"))
    assert half[0] is not None
    assert relative_difference(half[0], plain[0]) < 5e-2
    assert sum(grads is not None for grads in half) >= 2
    assert half_method.step == 3 and half_method.nonfinite_streak == 0


def test_an_overflow_under_loss_scaling_is_skipped_and_the_scaler_backs_off(tmp_path, tiny_t5_dir, kilt_dir,
                                                                            kilt_tasks):
    """A scale far too large overflows the fp16 gradients with finite losses: the scaler's own remedy. Each such step
    updates nothing and halves the scale; the steps are counted but do not stop training (the limit here is 1)."""
    trainer, method, steps = fit(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, "cgd",
                                 MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**40)),
                                 "method.max_nonfinite_steps=1", steps=40)
    skipped = [i for i, grads in enumerate(steps) if grads is None]
    assert skipped[:2] == [0, 1] and method.nonfinite_steps == len(skipped) and method.nonfinite_streak == 0
    assert len(skipped) < len(steps)  # it trains once the scale has come down
    assert trainer.scaler.get_scale() <= 2.0 ** (40 - len(skipped) + 1)
