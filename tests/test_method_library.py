"""torchjd's aggregators as multiret methods (against torchjd on the stacked task gradients), FAMO and static weights."""

import json
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from torchjd import aggregation

from multiret.errors import UserError
from multiret.mtl.famo import FAMO
from multiret.mtl.torchjd_weighting import gram_factor
from multiret.mtl.weighted import Weighted

from helpers import TINY_TASKS, tiny_config

TORCHJD = {  # multiret method → torchjd's aggregator with the settings of its conf/method YAML
    "upgrad": lambda tasks: aggregation.UPGrad(),
    "mgda": lambda tasks: aggregation.MGDA(epsilon=0.001, max_iters=100),
    "cagrad": lambda tasks: aggregation.CAGrad(c=0.5, norm_eps=1e-4),
    "imtl_g": lambda tasks: aggregation.IMTLG(),
    "aligned_mtl": lambda tasks: aggregation.AlignedMTL(scale_mode="min"),
    "dualproj": lambda tasks: aggregation.DualProj(),
    "random_weights": lambda tasks: aggregation.Random(),
    "nash_mtl": lambda tasks: aggregation.NashMTL(n_tasks=tasks, max_norm=1.0, update_weights_every=1, optim_niter=20),
}


def method_of(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    from multiret.configs import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return instantiate(compose("train", overrides=[f"method={name}", "paths.output_dir=/tmp/unused", *overrides]).method)


def torchjd_aggregate(aggregator, matrix: torch.Tensor, rng_state: torch.Tensor | None) -> torch.Tensor:
    """torchjd's aggregation of the rows of ``matrix``; a random one from the generator state the method started from."""
    if rng_state is None:
        return aggregator(matrix)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(rng_state)
        return aggregator(matrix)


def test_gram_factor_has_the_gram_matrix():
    jacobian = torch.randn(4, 30, dtype=torch.float64)
    jacobian[3] = jacobian[0] + jacobian[1]  # rank 3: a zero eigenvalue, rounded either side of 0
    gram = jacobian @ jacobian.T
    factor = gram_factor(gram)
    assert factor.shape == (4, 4)
    torch.testing.assert_close(factor @ factor.T, gram, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(TORCHJD))
def test_each_torchjd_method_equals_torchjds_aggregator_over_chained_steps(name):
    """Three tasks of unequal scale with conflicts, five steps (the stateful ones carry their state), float64."""
    method = method_of(name, "seed=3")
    method.setup_state([], 3)
    aggregator = TORCHJD[name](3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        shapes = [(3, 4), (5,)]
        grads = [torch.tensor(rng.normal(size=(3, *s))) * torch.tensor([1.0, 3.0, 0.5]).view(-1, *[1] * len(s))
                 for s in shapes]
        matrix = torch.cat([g.reshape(3, -1) for g in grads], dim=1)
        start = None if method.rng_state is None else method.rng_state.clone()
        method.task_losses = torch.ones(3, dtype=torch.float64)
        combined = torch.cat([g.flatten() for g in method.combine(grads, [], None)])
        expected = torchjd_aggregate(aggregator, matrix, start)
        torch.testing.assert_close(combined, expected, rtol=1e-5, atol=1e-8)


class Recorder(L.Callback):
    """Records what the gradient method combines (the stacked float32 task gradients) and what it writes back."""

    def __init__(self, method):
        self.steps = []
        original = method.combine

        def combine(task_grads, params, trainer):
            matrix = torch.cat([g.reshape(g.shape[0], -1) for g in task_grads], dim=1).clone()
            start = None if getattr(method, "rng_state", None) is None else method.rng_state.clone()
            out = original(task_grads, params, trainer)
            self.steps.append((matrix, start, torch.cat([g.flatten() for g in out]).clone()))
            return out

        method.combine = combine


def fit(tmp_path, model_dir, kilt_dir, tasks, method_name: str, precision: str, steps: int = 3):
    cfg = tiny_config(tmp_path, model_dir, kilt_dir, tasks, f"method={method_name}", f"trainer.max_steps={steps}")
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)
    method = instantiate(cfg.method)
    recorder = Recorder(method)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[method, recorder])
    trainer.fit(model, datamodule=datamodule)
    return model, method, recorder.steps


def assert_torchjd_steps(name: str, steps) -> None:
    """Each recorded step's update equals torchjd's aggregator on its (T, P) float32 task gradients, up to rounding."""
    aggregator = TORCHJD[name](2)
    for matrix, start, written in steps:
        assert matrix.dtype == torch.float32 and matrix.shape[0] == 2
        reference = matrix.double() if name == "random_weights" else matrix  # torchjd draws in its input's dtype
        expected = torchjd_aggregate(aggregator, reference, start).float()
        assert (written - expected).norm() <= 1e-4 * expected.norm()
        assert written.norm() > 0


@pytest.fixture(scope="module")
def upgrad_runs(tmp_path_factory, tiny_t5_dir, kilt_dir):
    """Three real steps of the tiny T5 under UPGrad per precision: the recorded task gradients and updates."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's operations are too small to split between threads
    try:
        return {precision: fit(tmp_path_factory.mktemp(precision), tiny_t5_dir, kilt_dir, TINY_TASKS, "upgrad", precision)[2]
                for precision in ("32-true", "bf16-mixed")}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_upgrad_on_real_training_steps_equals_torchjd_on_the_stacked_task_gradients(upgrad_runs, precision):
    """The tiny T5's real task gradients (float32; under bf16 autocast too): the update UPGrad writes in the real
    training path equals torchjd's UPGrad applied to the (T, P) matrix of the same gradients."""
    assert len(upgrad_runs[precision]) == 3
    assert_torchjd_steps("upgrad", upgrad_runs[precision])


@pytest.mark.parametrize("name", sorted(set(TORCHJD) - {"upgrad"}))
def test_every_torchjd_method_on_real_task_gradients_equals_torchjd(upgrad_runs, name):
    """Every other method combines the same real task gradients (both precisions, chained as one run) like torchjd."""
    method = method_of(name, "seed=5")
    method.setup_state([], 2)
    steps = []
    for matrix, _, _ in [*upgrad_runs["32-true"], *upgrad_runs["bf16-mixed"]]:
        start = None if getattr(method, "rng_state", None) is None else method.rng_state.clone()
        method.task_losses = torch.ones(2, dtype=torch.float64)
        written = method.combine([matrix.clone()], [], None)[0]
        steps.append((matrix, start, written))
    assert_torchjd_steps(name, steps)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name", sorted(TORCHJD))
def test_each_method_trained_for_real_combines_as_torchjd(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, name, precision):
    """Every torchjd method in the real training path (its own trajectory), both precisions."""
    torch.manual_seed(0)
    assert_torchjd_steps(name, fit(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks, name, precision)[2])


def one_step(method, module, trainer, losses, grads):
    """One optimizer step of the tiny fake module: per task, the loss hook, a backward adding ``grad``, the buffer hook."""
    for task, (loss, grad) in enumerate(zip(losses, grads)):
        module.active_task = trainer.datamodule.task_names[task]
        method.on_before_backward(trainer, module, torch.tensor(loss))
        grad = torch.tensor(grad)
        module.weight.grad = grad if module.weight.grad is None else module.weight.grad + grad
        method.on_after_backward(trainer, module)
    method.on_before_optimizer_step(trainer, module, None)


class FakeModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4))
        self.active_task = None
        self.logged = {}

    def log_dict(self, values, **kwargs):
        self.logged.update(values)


def fake_trainer(tasks=("a", "b", "c"), micro_batches=1):
    return SimpleNamespace(datamodule=SimpleNamespace(task_names=list(tasks), micro_batches=micro_batches))


def test_famo_matches_its_update_written_out_over_chained_steps():
    """d = Σ_t c_t g_t, c_t ∝ z_t / L_t, z = softmax(ξ); ξ takes Adam steps (with L2 decay γ) on -(∂z/∂ξ)ᵀ δ,
    δ = log L(previous step) - log L(this step) (Liu et al. 2023, Algorithm 1, with the next batch's losses)."""
    lr, gamma, eps = 0.1, 0.01, 1e-8
    method, module, trainer = FAMO(lr=lr, gamma=gamma, eps=eps, log_every_n_steps=1), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    rng = np.random.default_rng(7)
    xi, m, v, previous = np.zeros(3), np.zeros(3), np.zeros(3), None
    for step in range(6):
        losses = rng.uniform(0.2, 3.0, size=3).astype(np.float32).astype(np.float64)  # the losses reach the method as float32
        grads = rng.normal(size=(3, 4)) * np.array([[1.0], [5.0], [0.2]])
        module.weight.grad = None
        one_step(method, module, trainer, losses.tolist(), grads.tolist())
        z = np.exp(xi) / np.exp(xi).sum()
        c = (z / (losses + eps)) / (z / (losses + eps)).sum()
        np.testing.assert_allclose(module.weight.grad.numpy(), (c @ grads).astype(np.float32), rtol=2e-6, atol=1e-7)
        if previous is not None:
            delta = np.log(previous + eps) - np.log(losses + eps)
            jacobian = np.diag(z) - np.outer(z, z)
            grad = -(jacobian.T @ delta) + gamma * xi  # Adam's weight_decay adds γ ξ to the gradient
            m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
            t = step  # Adam's step count: the first update happens at step 1
            xi = xi - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        previous = losses
        np.testing.assert_allclose(method.logits.detach().numpy(), xi, rtol=1e-9, atol=1e-12)
    z = np.exp(xi) / np.exp(xi).sum()
    assert [module.logged[f"mtl/famo/weight/{t}"] for t in "abc"] == pytest.approx(z.tolist())


def test_famo_state_round_trips_and_refuses_micro_batches():
    method, module, trainer = FAMO(), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    for losses in ([1.0, 2.0, 3.0], [0.5, 2.5, 2.0], [0.4, 2.0, 1.0]):
        module.weight.grad = None
        one_step(method, module, trainer, losses, [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    restored = FAMO()
    restored.on_fit_start(trainer, FakeModule())
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.logits, method.logits) and torch.equal(restored.previous_losses, method.previous_losses)
    with pytest.raises(UserError, match=r"method=famo .* needs data.micro_batches=1 \(got 2\)"):
        FAMO().on_fit_start(fake_trainer(micro_batches=2), FakeModule())


def test_weighted_sums_the_task_gradients_with_the_configured_weights():
    method, module, trainer = Weighted(weights={"a": 0.5, "c": 4.0}), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    grads = [[1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 3.0, 0.0], [0.0, 0.0, 1.0, 7.0]]
    one_step(method, module, trainer, [1.0, 1.0, 1.0], grads)
    assert module.weight.grad.tolist() == pytest.approx(list(np.array([0.5, 1.0, 4.0]) @ np.array(grads)))


def test_weighted_without_weights_is_naive_to_the_bit():
    from multiret.mtl.naive import Naive

    results = []
    for method in (Weighted(), Naive()):
        module, trainer = FakeModule(), fake_trainer()
        method.on_fit_start(trainer, module)
        one_step(method, module, trainer, [1.0, 2.0, 3.0], [[0.1, 0.2, 0.3, 0.4], [1.0, -2.0, 0.5, 0.0], [3.0, 0, 0, 1e-3]])
        results.append(module.weight.grad)
    assert torch.equal(*results)


def test_weighted_refuses_unknown_tasks_and_non_positive_weights():
    expected = r"method.weights names task\(s\) \['nq'\] that data.task_names does not train; the tasks are \['a', 'b', 'c'\]"
    with pytest.raises(UserError, match=expected):
        Weighted(weights={"nq": 2.0}).on_fit_start(fake_trainer(), FakeModule())
    with pytest.raises(UserError, match=r"method.weights.a must be a finite number > 0, got 0.0"):
        Weighted(weights={"a": 0})


def test_a_missing_solver_is_one_line_naming_the_extra(monkeypatch):
    import torchjd._mixins

    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None if name == "cvxpy" else object())
    from multiret.errors import user_error_in

    with pytest.raises(Exception) as caught:
        method_of("cagrad")
    error = user_error_in(caught.value)  # what the command line prints as its one line
    assert isinstance(error, UserError)
    assert "method=cagrad: CAGradWeighting requires ['cvxpy']" in str(error) and "pip install 'multiret[solvers]'" in str(error)
    with pytest.raises(UserError, match=r"method=nash_mtl: .*requires \['cvxpy'\]"):
        method_of("nash_mtl").setup_state([], 2)


@pytest.mark.slow
def test_the_weights_sweep_runs_two_optuna_trials_scored_on_dev(tmp_path, tiny_t5_dir, kilt_dir):
    """`multiret train -m experiment=vital_weights_sweep` as a user runs it, shrunk to two trials of the tiny T5 on the
    tiny KILT files (named as the vital tasks, the third reusing `el`'s files)."""
    files = {"vital-qa": "qa", "vital-el": "el", "vital-clue": "el"}
    tasks = ",".join(f"{name}:{{train:{f}-train.jsonl,dev:{f}-dev.jsonl,prompt:{f.upper()},max_query_length:8}}"
                     for name, f in files.items())
    command = [sys.executable, "-m", "multiret.cli", "train", "-m", "experiment=vital_weights_sweep",
               "hydra.sweeper.n_trials=2", "model=t5_prompted", f"model.encoder.path={tiny_t5_dir}", "logger=csv",
               f"paths.log_dir={tmp_path}", "data=kilt_files", f"data.root={kilt_dir}", "data.corpus=corpus.tsv",
               f"data.tasks={{{tasks}}}", "data.task_names=[vital-qa,vital-el,vital-clue]", "data.batch_size=9",
               "data.max_passage_length=16", "data.bm25_top_k=5", "trainer.max_steps=2", "index.batch_size=16"]
    subprocess.run(command, check=True, cwd=tmp_path, timeout=900)
    (result,) = tmp_path.glob("vital_weights_sweep/multiruns/*/optimization_results.yaml")
    best = yaml.safe_load(result.read_text())
    assert set(best["best_params"]) == {"method.weights.vital-el", "method.weights.vital-clue"}
    trials = sorted(result.parent.glob("[0-9]*/eval/metrics.json"))
    assert len(trials) == 2
    scores = [sum(m["Rprec"] for m in json.loads(t.read_text()).values()) / 3 for t in trials]
    assert best["best_value"] == pytest.approx(max(scores))


def test_rule_time_benchmark_times_every_gram_rule(monkeypatch, capsys):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import rule_time

    monkeypatch.setattr(sys, "argv", ["rule_time.py", "--calls", "1"])
    rule_time.main()
    timed = json.loads(capsys.readouterr().out)
    assert set(timed) == {*TORCHJD, "pcgrad", "cgd", "gradnorm", "uncertainty"}
    assert all(seconds > 0 for seconds in timed.values())
