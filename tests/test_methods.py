"""The gradient-method family against each rule written out on flat vectors, over chained steps."""

import math

import numpy as np
import pytest
import torch

from multiret.data.batches import TaskBatch
from multiret.errors import UserError
from multiret.mtl.base import NonFiniteTrainingError, gram_matrix, weighted_sum
from multiret.mtl.cgd import CGD
from multiret.mtl.gradnorm import GradNorm
from multiret.mtl.naive import Naive
from multiret.mtl.pcgrad import pcgrad_coefficients
from multiret.mtl.uncertainty import UncertaintyWeighting

SHAPES = [(3, 4), (5,), (2, 3)]
NUM_TASKS = 3


def random_step(rng, scales=(1.0, 3.0, 0.5)):
    """Per-tensor (T, *shape) task gradients, their flat (T, P) copy, and task losses."""
    grads = [torch.tensor(rng.normal(size=(NUM_TASKS, *s))) * torch.tensor(scales).view(-1, *[1] * len(s)) for s in SHAPES]
    flat = torch.cat([g.reshape(NUM_TASKS, -1) for g in grads], dim=1).numpy()
    losses = torch.tensor(rng.uniform(0.5, 3.0, size=NUM_TASKS))
    return grads, flat, losses


def flat_of(per_tensor):
    return torch.cat([t.flatten() for t in per_tensor]).numpy()


def test_gram_and_weighted_sum_equal_their_flat_definitions():
    grads, flat, _ = random_step(np.random.default_rng(0))
    np.testing.assert_allclose(gram_matrix(grads).numpy(), flat @ flat.T, rtol=1e-12)
    c = torch.tensor([0.2, -1.0, 3.0], dtype=torch.float64)
    np.testing.assert_allclose(flat_of(weighted_sum(grads, c)), c.numpy() @ flat, rtol=1e-12)


def reference_pcgrad(flat, orders):
    projected = []
    for i in range(len(flat)):
        pc = flat[i].copy()
        for j in orders[i]:
            dot = pc @ flat[j]
            if dot < 0:
                pc = pc - dot / (flat[j] @ flat[j]) * flat[j]
        projected.append(pc)
    return np.sum(projected, axis=0)


def test_pcgrad_matches_sequential_projections_over_chained_steps():
    rng = np.random.default_rng(1)
    conflicts_seen = 0
    for _ in range(6):
        grads, flat, _ = random_step(rng)
        orders = [[j for j in rng.permutation(NUM_TASKS).tolist() if j != i] for i in range(NUM_TASKS)]
        coefficients, conflicts = pcgrad_coefficients(gram_matrix(grads), orders)
        conflicts_seen += conflicts
        np.testing.assert_allclose(flat_of(weighted_sum(grads, coefficients)), reference_pcgrad(flat, orders), rtol=1e-9, atol=1e-12)
    assert conflicts_seen > 0


def test_cgd_matches_its_rule_over_chained_steps():
    rng = np.random.default_rng(2)
    method = CGD(beta=0.25, tau=2.0)
    method.setup_state([], NUM_TASKS)
    weights = np.full(NUM_TASKS, 1 / NUM_TASKS)
    for _ in range(5):
        grads, flat, losses = random_step(rng)
        unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
        L = losses.numpy()
        scores = np.array([sum((L[i] * L[j]) ** 0.25 * unit[i] @ unit[j] for j in range(NUM_TASKS)) for i in range(NUM_TASKS)])
        logits = scores / 2.0 + np.log(weights)
        weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        method.task_losses = losses
        combined = method.combine(grads, [], None)
        np.testing.assert_allclose(flat_of(combined), weights @ flat, rtol=1e-9)
        np.testing.assert_allclose(method.weights.numpy(), weights, rtol=1e-9)


class HandAdam:
    """Adam written out (Kingma & Ba 2015, torch defaults: β=(0.9, 0.999), ε=1e-8)."""

    def __init__(self, lr):
        self.lr, self.m, self.v, self.t = lr, 0.0, 0.0, 0

    def step(self, x, grad):
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        return x - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def test_uncertainty_weighting_matches_its_rule_over_chained_steps():
    rng = np.random.default_rng(3)
    method = UncertaintyWeighting(lr=0.05)
    method.setup_state([], NUM_TASKS)
    log_vars, adam = np.zeros(NUM_TASKS), HandAdam(0.05)
    for _ in range(5):
        grads, flat, losses = random_step(rng)
        expected = np.exp(-log_vars) @ flat
        log_vars = adam.step(log_vars, 1 - np.exp(-log_vars) * losses.numpy())
        method.task_losses = losses
        np.testing.assert_allclose(flat_of(method.combine(grads, [], None)), expected, rtol=1e-9)
        np.testing.assert_allclose(method.log_vars.detach().numpy(), log_vars, rtol=1e-9, atol=1e-12)


def test_gradnorm_matches_its_rule_over_chained_steps():
    rng = np.random.default_rng(4)
    method = GradNorm(alpha=1.5, lr=0.05)
    method.setup_state([], NUM_TASKS)
    weights, adam, initial = np.ones(NUM_TASKS), HandAdam(0.05), None
    for _ in range(5):
        grads, flat, losses = random_step(rng)
        L = losses.numpy()
        initial = L.copy() if initial is None else initial
        expected = weights @ flat
        norms = np.linalg.norm(flat, axis=1)
        weighted = weights * norms
        ratios = (L / initial) / np.mean(L / initial)
        target = weighted.mean() * ratios**1.5
        weights = adam.step(weights, np.sign(weighted - target) * norms)
        weights = np.maximum(weights, 1e-8)
        weights = weights * NUM_TASKS / weights.sum()
        method.task_losses = losses
        np.testing.assert_allclose(flat_of(method.combine(grads, [], None)), expected, rtol=1e-9)
        np.testing.assert_allclose(method.weights.detach().numpy(), weights, rtol=1e-9)


@pytest.mark.parametrize("method_class", [GradNorm, UncertaintyWeighting])
def test_learned_weights_move_against_the_task_with_ten_times_the_loss(method_class):
    """Two tasks; task 1's loss and gradient are 10× task 0's. The learned weights must shift towards task 0."""
    method = method_class(lr=0.05)
    method.setup_state([], 2)
    rng = np.random.default_rng(5)
    for step in range(50):
        base = torch.tensor(rng.normal(size=(1, 8)))
        grads = [torch.cat([base, 10 * base + 0.1 * torch.tensor(rng.normal(size=(1, 8)))])]
        method.task_losses = torch.tensor([1.0, 10.0]) * (1 - step / 100)
        method.combine(grads, [], None)
    weights = method.weights.detach() if method_class is GradNorm else torch.exp(-method.log_vars.detach())
    assert weights[0] > 1.5 * weights[1]
    if method_class is GradNorm:
        assert math.isclose(float(weights.sum()), 2.0)


class FakeModule(torch.nn.Module):
    """The two things a gradient method needs from the bi-encoder: the active task and log_dict."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.active_task = None
        self.logged = {}

    def log_dict(self, values, **kwargs):
        self.logged.update(values)


def fake_trainer(tasks=("a", "b")):
    from types import SimpleNamespace

    return SimpleNamespace(datamodule=SimpleNamespace(task_names=list(tasks)), world_size=1, max_steps=10)


def one_step(method, module, trainer, losses, grads):
    for task, (loss, grad) in enumerate(zip(losses, grads)):
        module.active_task = trainer.datamodule.task_names[task]
        method.on_before_backward(trainer, module, torch.tensor(loss))
        module.weight.grad = torch.tensor(grad)
        method.on_after_backward(trainer, module)
    method.on_before_optimizer_step(trainer, module, None)


def test_a_non_finite_task_gradient_skips_the_whole_update_and_is_counted():
    from multiret.mtl.taco import TACO

    method, module, trainer = TACO(), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    one_step(method, module, trainer, [1.0, 2.0], [[1.0, 2.0, 3.0], [float("inf"), 0.0, 1.0]])
    assert module.weight.grad is None and method.skipped_last_update  # the optimizer gets nothing to apply
    assert method.nonfinite_steps == 1 and module.logged["mtl/nonfinite_steps"] == 1.0
    finite = [[1.0, 0.5, 0.0], [0.0, 2.0, 1.0]]
    one_step(method, module, trainer, [1.0, 2.0], finite)  # nothing of the bad step leaks into the next
    assert not method.skipped_last_update
    fresh, fresh_module = TACO(), FakeModule()
    fresh.on_fit_start(trainer, fresh_module)
    one_step(fresh, fresh_module, trainer, [1.0, 2.0], finite)
    assert module.weight.grad.tolist() == fresh_module.weight.grad.tolist()


def test_consecutive_non_finite_steps_stop_training_and_leave_loss_driven_state_alone():
    method, module, trainer = CGD(max_nonfinite_steps=3), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    one_step(method, module, trainer, [1.0, float("nan")], [[1.0, 0, 0], [0, 1.0, 0]])
    assert module.weight.grad is None and method.weights.tolist() == [0.5, 0.5]  # finite gradients, bad loss: skipped
    one_step(method, module, trainer, [1.0, 1.0], [[1.0, 0, 0], [0, 1.0, 0]])  # a finite step resets the count
    one_step(method, module, trainer, [1.0, float("nan")], [[1.0, 0, 0], [0, 1.0, 0]])
    one_step(method, module, trainer, [1.0, float("nan")], [[1.0, 0, 0], [0, 1.0, 0]])
    restored = CGD(max_nonfinite_steps=3)
    restored.on_fit_start(trainer, FakeModule())
    restored.load_state_dict(method.state_dict())
    assert (restored.nonfinite_steps, restored.nonfinite_streak) == (3, 2)  # the counters are checkpointed
    with pytest.raises(NonFiniteTrainingError, match=(
        r"training stopped at step 4: 3 steps in a row had a non-finite loss of task\(s\) \['b'\]; "
        r"their updates were skipped, so the weights are still finite \(those after step 1\)\. Lower optimizer\.lr"
    )):
        one_step(method, module, trainer, [1.0, float("nan")], [[1.0, 0, 0], [0, 1.0, 0]])
    assert module.weight.grad is None


def test_naive_skips_a_step_whose_summed_gradient_is_not_finite():
    method, module, trainer = Naive(), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    for task, grad in enumerate([[1.0, 0, 0], [0, float("nan"), 0]]):
        module.active_task = trainer.datamodule.task_names[task]
        method.on_before_backward(trainer, module, torch.tensor(1.0))
        module.weight.grad = torch.tensor(grad) if module.weight.grad is None else module.weight.grad + torch.tensor(grad)
        method.on_after_backward(trainer, module)
    method.on_before_optimizer_step(trainer, module, None)
    assert module.weight.grad is None and method.nonfinite_steps == 1
    assert module.logged["mtl/nonfinite_steps"] == 1.0


def test_gradient_statistics_are_logged_with_task_names():
    method, module, trainer = CGD(log_every_n_steps=1), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    one_step(method, module, trainer, [1.0, 1.0], [[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    assert module.logged["mtl/grad_norm/a"] == pytest.approx(5.0)
    assert module.logged["mtl/cosine/a~b"] == pytest.approx(0.0)
    assert module.logged["mtl/cgd/weight/a"] + module.logged["mtl/cgd/weight/b"] == pytest.approx(1.0)


class NamedModule(FakeModule):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Parameter(torch.ones(2))


def test_parameter_selection_buffers_only_matching_parameters_and_averages_the_rest():
    method, module, trainer = CGD(parameters=["^head$"]), NamedModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    assert [p.shape for p in method.buffers.grads] == [torch.Size([2, 2])]  # only `head` is buffered per task
    for task, (loss, grad) in enumerate(zip([1.0, 1.0], [[2.0, 4.0, 6.0], [0.0, 0.0, 2.0]])):
        module.active_task = trainer.datamodule.task_names[task]
        method.on_before_backward(trainer, module, torch.tensor(loss))
        module.weight.grad = torch.tensor(grad) if module.weight.grad is None else module.weight.grad + torch.tensor(grad)
        module.head.grad = torch.tensor([1.0, 0.0]) if task == 0 else torch.tensor([0.0, 1.0])
        method.on_after_backward(trainer, module)
    method.on_before_optimizer_step(trainer, module, None)
    assert module.weight.grad.tolist() == [1.0, 2.0, 4.0]  # the plain mean of the two task gradients
    assert module.head.grad.sum().item() == pytest.approx(1.0)  # CGD's weights (summing to 1) on e0 and e1


def test_parameter_selection_that_matches_nothing_is_refused():
    method = CGD(parameters=["^nothing$"])
    with pytest.raises(ValueError, match=r"matches no trainable parameter; names look like: weight"):
        method.on_fit_start(fake_trainer(), FakeModule())


class EmbeddingModule(torch.nn.Module):
    """A toy encoder whose embedding table dwarfs its one dense layer (as MiniLM's word embeddings do)."""

    def __init__(self):
        super().__init__()
        self.words = torch.nn.Embedding(100, 10)
        self.dense = torch.nn.Parameter(torch.ones(2))
        self.active_task = None
        self.logged = {}

    def log_dict(self, values, **kwargs):
        self.logged.update(values)


def test_logged_cosines_leave_out_the_embedding_tables_unless_asked():
    """Each task's rows of the table are its own (disjoint, large): over every parameter the cosine is near 0,
    over the dense layer, where the tasks agree, it is 1."""
    def step(method, module):
        method.on_fit_start(fake_trainer(), module)
        for task, rows in (("a", slice(0, 50)), ("b", slice(50, 100))):
            module.active_task = task
            method.on_before_backward(None, module, torch.tensor(1.0))
            module.words.weight.grad = torch.zeros(100, 10)
            module.words.weight.grad[rows] = 10.0
            module.dense.grad = torch.tensor([1.0, 2.0])
            method.on_after_backward(None, module)
        method.on_before_optimizer_step(fake_trainer(), module, None)
        return module.logged

    dense_only = step(CGD(log_every_n_steps=1), EmbeddingModule())
    assert dense_only["mtl/cosine/a~b"] == pytest.approx(1.0)
    assert dense_only["mtl/grad_norm/a"] == pytest.approx(math.sqrt(5))
    everything = step(CGD(log_every_n_steps=1, cosines_over="all"), EmbeddingModule())
    assert everything["mtl/cosine/a~b"] == pytest.approx(5 / (5 + 50 * 10 * 10.0**2))


def test_the_same_task_cosine_compares_each_task_with_its_gradient_of_the_step_before():
    method, module, trainer = CGD(log_every_n_steps=2), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    one_step(method, module, trainer, [1.0, 1.0], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # step 0: logged, no step before
    assert not any(key.startswith("mtl/cosine_same_task/") for key in module.logged)
    one_step(method, module, trainer, [1.0, 1.0], [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # step 1: kept for step 2
    one_step(method, module, trainer, [1.0, 1.0], [[1.0, 1.0, 0.0], [0.0, 3.0, 4.0]])  # step 2: logged
    assert module.logged["mtl/cosine_same_task/a"] == pytest.approx(1 / math.sqrt(2))
    assert module.logged["mtl/cosine_same_task/b"] == pytest.approx(3 / 5)


def test_every_step_the_method_logs_is_in_the_csv_log_whatever_the_trainers_interval(tmp_path, tiny_t5_dir, kilt_dir, kilt_tasks):
    """The trainer writes its own metrics every 10 steps; the method's every 2 must all land, each at its step."""
    import csv

    from multiret.experiment.run import run

    from helpers import tiny_config

    out = tmp_path / "run"
    run(tiny_config(out, tiny_t5_dir, kilt_dir, kilt_tasks, "method=cgd", "method.log_every_n_steps=2", "trainer.log_every_n_steps=10",
                    "trainer.max_steps=5", "stages=[train]", "callbacks.dev_validation=null"))
    with open(out / "csv" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("mtl/cosine/qa~el")]
    assert [int(row["step"]) for row in rows] == [0, 2, 4]
    assert [bool(row.get("mtl/cosine_same_task/qa")) for row in rows] == [False, True, True]


def test_the_method_finds_a_task_by_its_name_not_by_the_order_of_the_backwards():
    trainer = fake_trainer()
    in_order, reversed_order = CGD(), CGD()
    for method, order in ((in_order, ["a", "b"]), (reversed_order, ["b", "a"])):
        module = FakeModule()
        method.on_fit_start(trainer, module)
        grads = {"a": [1.0, 0.0, 2.0], "b": [0.0, 3.0, 1.0]}
        for task in order:
            module.active_task = task
            method.on_before_backward(trainer, module, torch.tensor({"a": 1.0, "b": 4.0}[task]))
            module.weight.grad = torch.tensor(grads[task])
            method.on_after_backward(trainer, module)
        assert method.task_losses.tolist() == [0.0, 0.0]  # collected at the optimizer step, in task_names order
        method.on_before_optimizer_step(trainer, module, None)
        assert method.task_losses.tolist() == [1.0, 4.0]
        method.result = module.weight.grad.tolist()
    assert in_order.result == reversed_order.result


def test_a_batch_or_a_backward_of_tasks_other_than_the_declared_ones_is_refused():
    method, module, trainer = Naive(), FakeModule(), fake_trainer()
    method.on_fit_start(trainer, module)
    swapped = [[TaskBatch("b", {}, {}), TaskBatch("a", {}, {})]]
    with pytest.raises(UserError, match=r"a training batch holds tasks \['b', 'a'\], but the data module declares "
                                        r"data.task_names=\['a', 'b'\]"):
        method.on_train_batch_start(trainer, module, swapped, 0)
    method.on_train_batch_start(trainer, module, [[TaskBatch("a", {}, {}), TaskBatch("b", {}, {})]], 0)
    module.active_task = "c"
    with pytest.raises(UserError, match=r"backward of task 'c', which is not in data.task_names=\['a', 'b'\]"):
        method.on_before_backward(trainer, module, torch.tensor(1.0))


def test_the_skip_flag_is_the_methods_and_the_module_reads_it_through_the_protocol():
    from multiret.model.biencoder import UpdateGuard

    method, module, trainer = Naive(), FakeModule(), fake_trainer()
    assert isinstance(method, UpdateGuard) and not hasattr(module, "update_skipped")
    method.on_fit_start(trainer, module)
    one_step(method, module, trainer, [1.0, float("nan")], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert method.skipped_last_update
    method.on_train_batch_start(trainer, module, [], 1)  # a new step: nothing skipped yet
    assert not method.skipped_last_update


def test_resuming_with_another_method_id_is_refused_naming_the_old_class_default():
    """Checkpoints written before every YAML set `name` recorded taco_published as `taco` (its class's name)."""
    trainer = fake_trainer()
    old = CGD()
    old.on_fit_start(trainer, FakeModule())
    renamed = CGD(name="cgd_slow")
    renamed.on_fit_start(trainer, FakeModule())
    with pytest.raises(UserError, match=r"trained with method='cgd', not method='cgd_slow' \(a checkpoint written before "
                                        r"methods were named by their conf/method file records method=cgd_slow as 'cgd' too"):
        renamed.load_state_dict(old.state_dict())
    other = Naive()
    other.on_fit_start(trainer, FakeModule())
    with pytest.raises(UserError, match=r"trained with method='cgd', not method='naive'; resume with method=cgd, or start") as refused:
        other.load_state_dict(old.state_dict())
    assert "written before" not in str(refused.value)
