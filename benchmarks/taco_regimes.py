"""TACO's regime on real MiniLM batches of the vital benchmark, per way of taking the median; and how far a
bf16 EMA moves the combined gradient from the float32 rule.

    python benchmarks/taco_regimes.py                 # 30 steps of the demo's data and model (experiment=vital_taco)
    python benchmarks/taco_regimes.py --steps 5 data.max_train_queries=50   # quicker; extra args are Hydra overrides

Every step takes each task's gradient on a real batch (one backward per task, as in training) and
hands the same gradients to one TACO per option, each keeping its own EMA (β of the config, the
demo's 0.9); the model then steps with the plain mean of the task gradients (AdamW), so every
option sees identical gradients. Options: ``published`` (the median over every parameter),
``nonzero`` (over the entries where the task's importance is not zero: the default),
``no word embeddings`` (the published median over the parameters every task reaches: the word
embeddings get the plain mean, ``method.parameters``). Prints one JSON object: per option, each
task's median importance (min / median / max over steps), the share of parameters each task
dominates (weight > 0.5) and the task-weight entropy (normalised by log T: 1 = uniform, 0 = one
task) at the last step, with the share of parameters whose entropy is below 0.1; and for β = the
config's and β = 0.999, the relative difference ``‖c_bf16 − c_fp32‖ / ‖c_fp32‖`` of the combined
gradient between a bf16 and a float32 EMA fed the same gradients (min / median / max over steps). The
object is printed every `--report-every` steps (one line each), the last line after the last step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from multiret.data.batches import TaskBatch
from multiret.experiment.run import CONFIG_DIR
from multiret.mtl.taco import TACO

OPTIONS: dict[str, dict[str, Any]] = {
    "published": {"median_over": "all"},
    "nonzero": {"median_over": "nonzero"},
    "no word embeddings": {"median_over": "all", "parameters": [r"^(?!.*word_embeddings)"]},
}
ENTROPY_CHUNK = 1 << 20


def task_gradients(model: torch.nn.Module, batch: list[list[TaskBatch]], params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Per parameter, the ``(T, *shape)`` task gradients of one step (a task that does not reach it: zeros)."""
    per_task = []
    for micro_batch in batch:
        for task_batch in micro_batch:
            model.zero_grad(set_to_none=True)
            model.task_loss(task_batch).backward()
            per_task.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
    return [torch.stack(grads) for grads in zip(*per_task)]


def built(options: dict[str, Any], beta: float, tau: float, model: torch.nn.Module, names: list[str]) -> TACO:
    """A TACO set up on ``model``'s parameters, as its callback would be at the start of training."""
    method = TACO(beta=beta, tau=tau, **options)
    method.task_names = names
    method._params, _ = method._select(model)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    method.row_sparse = [id(p) in tables and p.numel() >= method.row_tracked_tables_from for p in method._params]
    method.setup_state(method._params, len(names))
    return method


def combined(method: TACO, grads: list[torch.Tensor], params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """The method's combined gradients for its own parameters (given all of the model's, in order)."""
    chosen = {id(p) for p in method._params}
    mine = [g for g, p in zip(grads, params) if id(p) in chosen]
    result = method.apply_rule(mine, method._params, in_warmup=False, row_sparse=method.row_sparse)
    if result is None:
        raise SystemExit("a task gradient was not finite")
    return result


def weight_entropy(method: TACO) -> tuple[float, float]:
    """Mean normalised entropy of the task weights ``softmax_t(Ī_t / τ)`` over the rule's parameters, and the share
    of parameters below 0.1 (a weight of nearly 1 for one task)."""
    total, entropy, low = 0, 0.0, 0
    num_tasks = len(method.task_names)
    for ema in method.importance_ema():
        flat = ema.reshape(num_tasks, -1)
        for start in range(0, flat.shape[1], ENTROPY_CHUNK):
            scores = flat[:, start : start + ENTROPY_CHUNK] / method.tau
            weights = torch.softmax(scores, dim=0)
            values = -(weights * torch.log_softmax(scores, dim=0)).sum(0) / math.log(num_tasks)
            entropy += float(values.sum())
            low += int((values < 0.1).sum())
            total += values.numel()
    return entropy / total, low / total


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    diff = sum(float((x.double() - y.double()).pow(2).sum()) for x, y in zip(a, b))
    norm = sum(float(y.double().pow(2).sum()) for y in b)
    return math.sqrt(diff / norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps measured")
    parser.add_argument("--report-every", type=int, default=5, help="also print the JSON so far every this many steps")
    parser.add_argument("--experiment", default="vital_taco", help="the experiment whose model, data and β are used")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.cache_dir=/tmp/cache")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the published rule's zero-median warnings are what is measured here
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={args.experiment}", f"paths.output_dir={out}", *args.overrides])
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)
    datamodule.prepare_data()
    datamodule.setup("fit")
    names = [task.name for task in datamodule.tasks]
    params = [p for p in model.parameters() if p.requires_grad]
    beta, tau = cfg.method.beta, cfg.method.tau
    methods = {name: built(options, beta, tau, model, names) for name, options in OPTIONS.items()}
    pairs = {b: (built({"median_over": "nonzero"}, b, tau, model, names),
                 built({"median_over": "nonzero", "ema_dtype": "bfloat16"}, b, tau, model, names))
             for b in sorted({beta, 0.999})}
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr)
    medians: dict[str, list[list[float]]] = {name: [] for name in methods}
    bf16: dict[float, list[float]] = {b: [] for b in pairs}
    print(f"{time.strftime('%X')} model and data ready", file=sys.stderr)
    model.train()
    batches = iter(datamodule.train_dataloader())
    for step in range(args.steps):
        grads = task_gradients(model, next(batches), params)
        with torch.no_grad():
            for name, method in methods.items():
                combined(method, grads, params)
                medians[name].append(method.medians)
            for b, (exact, half) in pairs.items():
                bf16[b].append(relative_difference(combined(half, grads, params), combined(exact, grads, params)))
            for param, grad in zip(params, grads):
                param.grad = grad.mean(0)
        torch.nn.utils.clip_grad_norm_(params, cfg.model.max_grad_norm)
        optimizer.step()
        print(f"{time.strftime('%X')} step {step}: medians {json.dumps({n: m[-1] for n, m in medians.items()})}", file=sys.stderr)
        if (step + 1) % args.report_every == 0 or step + 1 == args.steps:
            print(json.dumps(report(cfg, step + 1, names, methods, medians, bf16)), flush=True)


def report(cfg: Any, steps: int, names: list[str], methods: dict[str, TACO], medians: dict[str, list[list[float]]],
           bf16: dict[float, list[float]]) -> dict[str, Any]:
    """The measurements after ``steps`` steps, as one JSON-ready object."""
    result: dict[str, Any] = {"model": cfg.model.encoder.path, "steps": steps, "beta": cfg.method.beta,
                              "tau": cfg.method.tau, "tasks": names, "options": {}}
    for name, method in methods.items():
        entropy, low = weight_entropy(method)
        shares = {k.rsplit("/", 1)[1]: round(v, 4) for k, v in method.log_values().items() if "specialised" in k}
        result["options"][name] = {
            "rule_parameters": sum(p.numel() for p in method._params),
            "median_importance": {task: spread([m[t] for m in medians[name]]) for t, task in enumerate(names)},
            "steps_with_a_zero_median": sum(min(m) == 0.0 for m in medians[name]),
            "dominated_share": shares,
            "weight_entropy_mean": round(entropy, 4),
            "weight_entropy_below_0.1": round(low, 4),
        }
    result["bf16_ema_relative_difference"] = {str(b): spread(values) for b, values in bf16.items()}
    return result


if __name__ == "__main__":
    main()
