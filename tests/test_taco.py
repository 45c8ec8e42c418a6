"""TACO against its rule written out element by element, and the callback against the functional core."""

import numpy as np
import pytest
import torch

from multiret.errors import UserError
from multiret.mtl.taco import TACO, taco_combine
from multiret.mtl.taco_ema import importance_ema_from_state
from multiret.mtl.taco_sweep import ParameterBlocks, lower_medians_, softmax_weighted_sum


def lower_median(values: np.ndarray, median_over: str = "all") -> float:
    """torch.median's convention: the lower of the two middle values for an even count; over every value or, with
    ``nonzero``, over the non-zero ones (0 if there are none)."""
    ordered = np.sort(values if median_over == "all" else values[values != 0])
    return float(ordered[(len(ordered) - 1) // 2]) if len(ordered) else 0.0


def reference_step(grads, params, ema, beta, tau, in_warmup, normalize, median_over="all"):
    """The rule of docs/taco.md, in plain NumPy float64 loops."""
    num_tasks, num_params = grads.shape
    importance = np.abs(params[None, :] * grads)
    if normalize:
        for t in range(num_tasks):
            importance[t] = importance[t] / (lower_median(importance[t], median_over) + 1e-12)
    new_ema = beta * ema + (1 - beta) * importance
    if in_warmup:
        return grads.sum(0) / num_tasks, new_ema
    scores = np.empty_like(new_ema)
    for t in range(num_tasks):
        scale = 1.0 if normalize else lower_median(new_ema[t], median_over) + 1e-12
        scores[t] = new_ema[t] / scale / tau
    combined = np.zeros(num_params)
    for j in range(num_params):
        weights = np.exp(scores[:, j] - scores[:, j].max())
        weights /= weights.sum()
        combined[j] = (weights * grads[:, j]).sum() / num_tasks
    return combined, new_ema


@pytest.mark.parametrize("median_over", ["all", "nonzero"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("num_params", [7, 8])
def test_taco_combine_matches_the_written_out_rule_over_chained_steps(normalize, num_params, median_over):
    rng = np.random.default_rng(0)
    num_tasks, beta, tau = 3, 0.9, 2.0
    params = rng.normal(size=num_params)
    ema_ref = np.zeros((num_tasks, num_params))
    ema = torch.zeros(num_tasks, num_params, dtype=torch.float64)
    for step in range(5):
        grads = rng.normal(size=(num_tasks, num_params)) * np.array([[1.0], [10.0], [0.1]])
        grads[1, : 2 + step % 3] = 0.0  # entries task 1 does not reach: the two medians differ
        in_warmup = step < 2
        expected, ema_ref = reference_step(grads, params, ema_ref, beta, tau, in_warmup, normalize, median_over)
        g, p = torch.tensor(grads), torch.tensor(params)
        inputs = (g, p, ema)
        before = [x.clone() for x in inputs]
        combined, new_ema = taco_combine(g, p, ema, beta=beta, tau=tau, in_warmup=in_warmup, normalize=normalize,
                                         median_over=median_over)
        np.testing.assert_allclose(combined.numpy(), expected, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(new_ema.numpy(), ema_ref, rtol=1e-10)
        assert new_ema is not ema and all(torch.equal(x, b) for x, b in zip(inputs, before))  # inputs unchanged
        ema = new_ema
        params = params - 0.1 * expected


def test_taco_favours_the_task_that_matters_most_for_a_parameter():
    params = torch.tensor([1.0, 1.0, 1.0, 1.0])
    grads = torch.tensor([[5.0, 0.01, 0.01, 0.01], [0.01, 5.0, 0.01, 0.01]])
    combined, _ = taco_combine(grads, params, torch.zeros(2, 4), beta=0.0, tau=0.5, in_warmup=False)
    naive = grads.sum(0) / 2
    assert combined[0] > 0.9 * grads[0, 0] / 2 and combined[1] > 0.9 * grads[1, 1] / 2
    assert torch.all(combined <= naive + 1e-7)


@pytest.mark.parametrize("median_over", ["all", "nonzero"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("table_rows", [None, 10, 40])  # no table; untouched entries below / above half of all
@pytest.mark.parametrize("batched", [False, True])  # medians task by task (large models), or all tasks at once
@pytest.mark.parametrize("lag_limit", [TACO().ema.lag_limit, 1.0])  # the stored EMA decayed lazily, or every step
def test_per_tensor_rule_equals_taco_combine_on_flattened_parameters(normalize, table_rows, batched, lag_limit,
                                                                      median_over):
    """Per tensor, an embedding table worked on only at its touched rows, the rule is taco_combine on the flat model."""
    torch.manual_seed(1)
    shapes = ([(table_rows, 3)] if table_rows else []) + [(3, 4), (5,), (2, 2, 3)]
    params = [torch.randn(s, dtype=torch.float64) for s in shapes]
    method = TACO(beta=0.8, tau=2.0, normalize=normalize, median_over=median_over,
                  batched_medians_up_to=1 << 62 if batched else 0, lag_limit=lag_limit)
    method.ema.dtype = torch.float64  # float64 throughout, to compare at 1e-12
    method.setup_state(params, num_tasks=3)
    flat_params = torch.cat([p.flatten() for p in params])
    flat_ema = torch.zeros(3, flat_params.numel(), dtype=torch.float64)
    for step in range(4):
        grads = [torch.randn((3, *s), dtype=torch.float64) for s in shapes]
        if table_rows:
            grads[0][:, 2 + step :] = 0.0  # rows no task touched this step (a different set each step)
            grads[0][1, 0] = 0.0  # a row only some tasks touched
        flat_grads = torch.cat([g.flatten(1) for g in grads], dim=1)
        expected, flat_ema = taco_combine(flat_grads, flat_params, flat_ema, beta=0.8, tau=2.0, in_warmup=step == 0,
                                          normalize=normalize, median_over=median_over)
        combined = method.apply_rule(grads, params, step == 0, row_sparse=[bool(table_rows) and i == 0 for i in range(len(shapes))])
        torch.testing.assert_close(torch.cat([c.flatten() for c in combined]), expected, rtol=1e-12, atol=0)
        ema = method.importance_ema()
        torch.testing.assert_close(torch.cat([e.flatten(1) for e in ema], dim=1), flat_ema, rtol=1e-12, atol=0)
        assert method.ema.lag == (0 if lag_limit == 1.0 else step + 1)


def test_invalid_hyper_parameters_are_rejected_with_the_key_name():
    with pytest.raises(ValueError, match="method.beta"):
        TACO(beta=1.0)
    with pytest.raises(ValueError, match="method.tau"):
        TACO(tau=0)
    with pytest.raises(ValueError, match="method.median_over='reached'"):
        TACO(median_over="reached")
    with pytest.raises(ValueError, match="method.block"):
        TACO(block=0)


@pytest.mark.parametrize("normalize", [True, False])
def test_specialisation_share_counts_parameters_a_task_dominates(normalize):
    params = [torch.zeros(4, 2), torch.zeros(2)]
    method = TACO(tau=0.1, normalize=normalize)
    method.task_names = ["a", "b"]
    method.setup_state(params, num_tasks=2)
    method.ema.stored[0][0] = 1.0  # task a dominates the 8 entries of the first tensor
    method.ema.stored[1][1, 0] = 1.0  # task b one entry of the second; its other entry is a tie (weights 0.5, not > 0.5)
    values = {key: value for key, value in method.log_values().items() if "specialised" in key}
    assert values == {"mtl/taco/specialised/a": pytest.approx(8 / 10), "mtl/taco/specialised/b": pytest.approx(1 / 10)}


def test_bf16_ema_with_stochastic_rounding_tracks_the_float32_ema():
    """Constant importance 1 for 2,000 steps: the float32 EMA reaches 1 − 0.999²⁰⁰⁰ ≈ 0.865."""
    params = [torch.ones(4000)]
    grads = [torch.ones(2, 4000)]
    exact, half = TACO(beta=0.999, normalize=False), TACO(beta=0.999, normalize=False, ema_dtype="bfloat16")
    for method in (exact, half):
        method.setup_state(params, num_tasks=2)
        for _ in range(2000):
            method.apply_rule(grads, params, in_warmup=True)
    expected = 1 - 0.999**2000
    assert half.ema.stored[0].dtype == torch.bfloat16
    assert float(exact.importance_ema()[0].mean()) == pytest.approx(expected, rel=1e-4)
    assert float(half.importance_ema()[0].mean()) == pytest.approx(expected, rel=0.01)
    nearest = torch.zeros(1, dtype=torch.bfloat16)
    for _ in range(2000):
        nearest = nearest * 0.999 + 0.001  # round-to-nearest bf16 stalls far below
    assert float(nearest) < 0.6


def test_invalid_ema_dtype_is_rejected():
    with pytest.raises(ValueError, match="method.ema_dtype='float16'"):
        TACO(ema_dtype="float16")


class TableModule(torch.nn.Module):
    """An embedding table between two dense parameters, in float64, as the callback sees a model."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
        self.table = torch.nn.Embedding(30, 3).double()
        self.linear = torch.nn.Linear(3, 2).double()
        self.active_task = None
        self.logged = {}

    def log_dict(self, values, **kwargs):
        self.logged = values


@pytest.mark.parametrize("median_over", ["all", "nonzero"])
@pytest.mark.parametrize("tracked", [True, False], ids=["table-by-rows", "table-whole"])
@pytest.mark.parametrize("normalize", [True, False])
def test_callback_sweeping_one_flat_block_and_table_rows_equals_taco_combine(normalize, tracked, median_over):
    """The training path (task buffers and EMA as views of one (T, P) tensor, tables by touched rows or, below
    row_tracked_tables_from entries, whole)."""
    from types import SimpleNamespace

    torch.manual_seed(2)
    module = TableModule()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(task_names=list("abc")), world_size=1,
                              max_steps=10)
    method = TACO(beta=0.8, tau=2.0, normalize=normalize, warmup_ratio=0.1, median_over=median_over,
                  log_every_n_steps=1, **({"row_tracked_tables_from": 0} if tracked else {}))
    method.ema.dtype = torch.float64  # float64 throughout, to compare at 1e-12
    method.on_fit_start(trainer, module)
    assert method.row_sparse == [False, tracked, False, False] and method.ema.flat is not None
    params = list(module.parameters())
    flat_params = torch.cat([p.detach().flatten() for p in params])
    flat_ema = torch.zeros(3, flat_params.numel(), dtype=torch.float64)
    # touched table rows per step: fewer, then most (the whole table is swept), then fewer again, so task 0's table
    # buffer, which receives the combined rows, must be cleared at the rows written the step before; with ≤ 13 of
    # 30 rows the zeros alone fix the median at 0
    for step, touched in enumerate([3, 12, 20, 5, 8]):
        grads = [torch.randn((3, *p.shape), dtype=torch.float64) for p in params]
        grads[1][:, torch.randperm(30)[touched:]] = 0.0  # table rows no task touched
        backwards = [0, 0, 1, 2] if step == 2 else [0, 1, 2]  # at step 2 task 0 accumulates two micro-batches
        for position, task in enumerate(backwards):
            module.active_task = trainer.datamodule.task_names[task]
            method.on_before_backward(trainer, module, torch.tensor(1.0))
            for param, grad in zip(params, grads):
                param.grad = grad[task].clone() / backwards.count(task)
            if step == 2 and task == 0:  # of the table, the first micro-batch touches rows 0-14, the second the rest
                params[1].grad = grads[1][0].clone()
                if task not in backwards[:position]:  # the step's first backward of task 0
                    params[1].grad[15:] = 0.0
                else:
                    params[1].grad[:15] = 0.0
            if task == 2 and step % 2:  # this task's backward does not reach the linear layer's weight
                params[2].grad = None
                grads[2][task] = 0.0
            method.on_after_backward(trainer, module)
        method.on_before_optimizer_step(trainer, module, None)
        flat_grads = torch.cat([g.flatten(1) for g in grads], dim=1)
        expected, flat_ema = taco_combine(flat_grads, flat_params, flat_ema, beta=0.8, tau=2.0, in_warmup=step == 0,
                                          normalize=normalize, median_over=median_over)
        torch.testing.assert_close(torch.cat([p.grad.flatten() for p in params]), expected, rtol=1e-12, atol=0)
        # the logged statistics are of the task gradients, although the combined one was written over task 0's buffers,
        # and leave the embedding table out (method.cosines_over)
        assert method.in_diagnostics == [True, False, True, True]
        read = torch.cat([g.flatten(1) for g, kept in zip(grads, method.in_diagnostics) if kept], dim=1)
        logged_norms = [module.logged[f"mtl/grad_norm/{task}"] for task in "abc"]
        torch.testing.assert_close(torch.tensor(logged_norms, dtype=torch.float64), read.norm(dim=1), rtol=1e-12, atol=0)
        # the logged medians: of this step's importances (normalised), of the EMA (not normalised)
        of = (flat_params * flat_grads).abs() if normalize else flat_ema
        medians = [lower_median(row, median_over) for row in of.numpy()]
        np.testing.assert_allclose([module.logged[f"mtl/taco/median/{task}"] for task in "abc"], medians, rtol=1e-12)
        ema = method.importance_ema()
        torch.testing.assert_close(torch.cat([e.flatten(1) for e in ema], dim=1), flat_ema, rtol=1e-12, atol=0)
        for param in params:
            param.grad.mul_(0.5)  # clipping scales the handed-over gradient in place


@pytest.mark.parametrize("median_over", ["all", "nonzero"])
def test_a_zero_median_is_reported_once_per_task_under_the_published_rule(caplog, median_over):
    """Most entries without gradient (an embedding table's unused rows): as published, the normalisation divides
    by eps alone; over the non-zero entries the median stays that of the entries the task reaches."""
    import logging
    import re

    params = [torch.randn(20, 2), torch.randn(3)]
    method = TACO(median_over=median_over)
    method.task_names = ["qa", "el"]
    method.setup_state(params, num_tasks=2)
    grads = [torch.zeros(2, 20, 2), torch.randn(2, 3)]
    grads[0][:, 0] = 1.0
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            method.apply_rule(grads, params, in_warmup=False, row_sparse=[True, False])
    if median_over == "all":
        assert len(re.findall(r"median importance of task (qa|el) is 0", caplog.text)) == 2
        assert "method.median_over=nonzero" in caplog.text
        assert method.medians == [0.0, 0.0]
    else:
        assert "TACO" not in caplog.text and min(method.medians) > 0


@pytest.mark.parametrize("path", ["medians selected", "zero medians proven", "normalize off"])
@pytest.mark.parametrize("case", ["nan where θ is 0", "inf", "product overflows"])
def test_a_non_finite_importance_returns_none_and_leaves_the_ema_untouched(case, path):
    """Checked on the medians' buffer (every task's median selected) and by matrix-vector products (otherwise)."""
    params = [torch.tensor([0.0, 1.0, 2.0, 1e30]), torch.randn(20, 2)]
    method = TACO(beta=0.9, normalize=path != "normalize off")
    method.setup_state(params, num_tasks=2)
    grads = [torch.randn(2, 4), torch.zeros(2, 20, 2)]
    grads[1][:, : 3 if path == "zero medians proven" else 15] = 1.0  # 3 touched rows: 34 of 44 entries known zero
    assert method.apply_rule(grads, params, in_warmup=False, row_sparse=[False, True]) is not None
    stored, lag = [e.clone() for e in method.ema.stored], method.ema.lag
    grads[0][1, 3] = 1e-10  # a finite product: θ·g = 1e20
    bad = {"nan where θ is 0": (0, float("nan")), "inf": (2, float("inf")), "product overflows": (3, 1e10)}[case]
    grads[0][1, bad[0]] = bad[1]
    assert method.apply_rule(grads, params, in_warmup=False, row_sparse=[False, True]) is None
    assert method.ema.lag == lag and all(torch.equal(a, b) for a, b in zip(method.ema.stored, stored))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [1, 2, 7, 10, 1001])
def test_lower_medians_equal_torch_median(length, dtype):
    """The numpy selection picks torch.median's value: the lower middle for an even count, ties and zeros included."""
    torch.manual_seed(length)
    rows = torch.randn(3, length, dtype=dtype).abs()
    rows[1] = rows[1].round()  # many ties
    rows[2, : length // 2 + 1] = 0.0  # zeros at and past the middle
    expected = rows.median(dim=1).values.tolist()
    assert lower_medians_(rows.clone()) == expected


@pytest.mark.parametrize("length", [1, 2, 7, 10, 1001])
def test_lower_non_zero_medians_equal_torch_median_of_the_non_zero_entries(length):
    """The default rule's medians: torch.median of each row's non-zero entries, 0 for a row without any."""
    torch.manual_seed(length)
    rows = torch.randn(4, length).abs()
    rows[0, ::3] = 0.0
    rows[1] = rows[1].round()  # ties, and zeros among them
    rows[2] = 0.0
    rows[3, : length // 2 + 1] = 0.0
    expected = [row[row != 0].median().item() if bool((row != 0).any()) else 0.0 for row in rows]
    assert lower_medians_(rows.clone(), nonzero=True) == expected


def test_parameter_blocks_read_every_parameter_in_flat_order():
    """Large parameters as views cut into blocks, small ones grouped: together the concatenated parameters."""
    params = [torch.randn(s) for s in [(3,), (2, 2), (9,), (1,), (4, 5), (2,), (3,)]]
    blocks = ParameterBlocks(params, block=8)
    flat = torch.cat([p.flatten() for p in params])
    pieces = list(blocks)
    assert [start for start, _, _ in pieces] == sorted(start for start, _, _ in pieces)
    assert torch.equal(torch.cat([theta for _, _, theta in pieces]), flat)
    assert all(torch.equal(theta, flat[start:end]) for start, end, theta in pieces) and blocks.numel == flat.numel()
    assert all(end - start < 8 + 8 // 2 for start, end, _ in pieces)  # a group closes once it reaches a block


def test_softmax_weighted_sum_of_large_close_float32_scores_matches_float64():
    """Stored EMAs reach 1e10 (median 0: importances divided by eps); the weights must stay exact and finite."""
    torch.manual_seed(3)
    ema = (torch.rand(3, 4096) * 1e10).float()
    ema[1, :100] = ema[0, :100] + 64.0  # close values, a few ulps apart
    grads = torch.randn(3, 4096)
    out = torch.empty(4096)
    softmax_weighted_sum(ema, grads, 0.999 / 2, out)
    weights = torch.softmax(ema.double() * (0.999 / 2), dim=0)
    torch.testing.assert_close(out.double(), (weights * grads.double()).sum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_specialisation_share_matches_a_plain_softmax(normalize):
    torch.manual_seed(4)
    params = [torch.zeros(30, 7), torch.zeros(50)]
    method = TACO(beta=0.9, tau=0.5, normalize=normalize, block=64)  # several blocks per tensor
    method.task_names = ["a", "b", "c"]
    method.setup_state(params, num_tasks=3)
    for ema in method.ema.stored:
        ema.copy_(torch.rand(ema.shape) * 3)
    method.ema.lag = 2
    ema = torch.cat([e.flatten(1) for e in method.importance_ema()], dim=1)
    scale = 1.0 if normalize else ema.median(dim=1, keepdim=True).values + 1e-12
    best, owner = torch.softmax(ema / scale / 0.5, dim=0).max(dim=0)
    expected = {f"mtl/taco/specialised/{n}": float(((owner == t) & (best > 0.5)).sum()) / ema.shape[1]
                for t, n in enumerate("abc")}
    shares = {key: value for key, value in method.log_values().items() if "specialised" in key}
    assert shares == pytest.approx(expected)


def test_checkpoint_state_round_trips_the_lagged_ema_and_reads_the_earlier_layout():
    params = [torch.randn(6, 2), torch.randn(3)]
    grads = [torch.randn(2, 6, 2), torch.randn(2, 3)]
    method = TACO(beta=0.9)
    method.setup_state(params, num_tasks=2)
    for _ in range(3):
        method.apply_rule(grads, params, in_warmup=False)
    state = method.extra_state()
    assert state["ema_lag"] == 3
    restored = TACO(beta=0.9)
    restored.setup_state(params, num_tasks=2)
    restored.load_extra_state(state)
    assert restored.ema.lag == 3 and all(torch.equal(a, b) for a, b in zip(restored.ema.stored, method.ema.stored))
    ema = method.importance_ema()
    for a, b in zip(importance_ema_from_state(state), ema):
        torch.testing.assert_close(a, b)
    earlier = {"ema": [e.clone() for e in ema], "generator": state["generator"], "beta": 0.9}  # Ī itself, no lag
    restored.load_extra_state(earlier)
    assert restored.ema.lag == 0 and all(torch.equal(a, b) for a, b in zip(restored.importance_ema(), ema))


def test_a_checkpoint_of_other_parameters_is_one_user_error():
    """Resuming TACO after method.parameters (or the model) changed: the EMA has other shapes; a user error, not a bug."""
    method = TACO(beta=0.9)
    method.setup_state([torch.randn(6, 2), torch.randn(3)], num_tasks=2)
    other = TACO(beta=0.9)
    other.setup_state([torch.randn(6, 2)], num_tasks=2)
    with pytest.raises(UserError, match=r"method.parameters\); resume with the same ones, or start a fresh run folder"):
        other.load_extra_state(method.extra_state())


def test_the_demo_configuration_runs_taco_with_non_zero_medians_on_real_minilm_batches(tmp_path):
    """`experiment=vital_taco` (MiniLM, whose unused word-embedding rows are half its parameters) for two real steps:
    every task's median importance is logged, and above 0, at every step (issue: the published rule's medians are 0)."""
    import csv

    from hydra import compose, initialize_config_dir

    from multiret.experiment.run import CONFIG_DIR, run

    out = tmp_path / "run"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=vital_taco", "debug=fast", "stages=[train]", "trainer.max_steps=2", "method.log_every_n_steps=1",
            f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}",
        ])
    assert cfg.method.median_over == "nonzero" and cfg.method.warmup_ratio == cfg.scheduler.warmup_ratio
    run(cfg)
    with open(out / "csv" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("mtl/taco/median/vital-qa")]
    assert len(rows) == 2
    for row in rows:
        for task in cfg.data.task_names:
            assert float(row[f"mtl/taco/median/{task}"]) > 0
            assert 0 <= float(row[f"mtl/taco/specialised/{task}"]) <= 1
