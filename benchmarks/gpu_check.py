"""The GPU measurements of benchmarks/gpu_check.sh: step time and peak memory per method, a host-side TACO step, GPU search.

    python benchmarks/gpu_check.py --out gpu_check.json          # on a GPU machine (bf16, T5-base shape)
    python benchmarks/gpu_check.py --dry-run --out dry.json     # the same code on the CPU at a tiny shape

1. Every gradient method (conf/method/*.yaml) timed by benchmarks/step_time.py's own code at
   the T5-base encoder shape with the paper's per-GPU batch (128 queries over 8 GPUs: 16 per
   GPU, 2 from each of 8 tasks, 1 positive + 2 negatives, queries 32 and passages 160 tokens)
   under bf16, all in one process on the same batches, methods taking turns; plus the peak
   GPU memory of each method's run.
2. A reference-style TACO step on the same batches: every task's gradient flattened into one
   vector and copied to the host, the rule (``taco_combine``) applied there, the result
   copied back, as the authors' ``grad2vec`` code does; its median against naive's and ours.
3. The corpus encoding of `multiret index` (``index_corpus``) over N synthetic passages with a
   tiny T5, the IVF-PQ index moved to the GPU with ``DenseIndex.to_gpus`` and searched.

``--dry-run`` runs all of it on the CPU: tiny T5, 2 tasks, 2,000 passages, no GPU move, and
float32 as ``trainer=cpu`` (under bf16-mixed on the CPU, a method's combined gradient came
out bf16 and could not be assigned to the float32 parameters).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from step_time import METHOD_CONFIGS, method_config, model_path, random_batches, time_method

from multiret.data.batches import TaskBatch
from multiret.data.collator import PromptCollator
from multiret.data.corpus import Corpus
from multiret.data.tasks import TaskSpec
from multiret.index.dense import index_corpus
from multiret.index.encoding_settings import EncodingSettings
from multiret.model.biencoder import BiEncoder
from multiret.model.encoder import TextEncoder
from multiret.mtl.taco import taco_combine
from multiret.testing import build_tiny_t5

PAPER_BATCH = {"tasks": 8, "queries": 2, "passages": 3, "query_length": 32, "passage_length": 160}
DRY_BATCH = {"tasks": 2, "queries": 2, "passages": 3, "query_length": 8, "passage_length": 16}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def grad2vec(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """All gradients as one flat float32 vector on the host (the reference's per-task copy)."""
    return torch.cat([p.grad.reshape(-1).float() for p in params]).cpu()


def reference_taco_steps(path: str, pooling: str, batches: list, warmup: int, precision: str) -> list[float]:
    """Seconds per step of TACO done the reference's way: per-task host copies, the rule on the host, one copy back."""
    taco = method_config("taco")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = BiEncoder(TextEncoder(path, pooling=pooling), optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5)).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ema: torch.Tensor | None = None
    seconds = []
    for batch in batches:
        _sync()
        start = time.perf_counter()
        task_grads = []
        for task_batch in batch[0]:
            optimizer.zero_grad(set_to_none=False)
            query, passage = ({k: v.to(device) for k, v in side.items()} for side in (task_batch.query, task_batch.passage))
            on_device = TaskBatch(task_batch.task, query, passage)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
                loss = model.task_loss(on_device)
            loss.backward()
            task_grads.append(grad2vec(params))
        grads = torch.stack(task_grads)
        theta = torch.cat([p.detach().reshape(-1).float() for p in params]).cpu()
        ema = torch.zeros_like(grads) if ema is None else ema
        combined, ema = taco_combine(grads, theta, ema, beta=taco.beta, tau=taco.tau, in_warmup=False,
                                     normalize=taco.normalize, median_over=taco.median_over)
        combined = combined.to(device)
        offset = 0
        for p in params:
            p.grad.copy_(combined[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        if model.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, model.max_grad_norm)
        optimizer.step()
        _sync()
        seconds.append(time.perf_counter() - start)
    return seconds[warmup:]


def method_steps(methods: list[str], path: str, pooling: str, batches: list, tasks: list[TaskSpec], warmup: int,
                 rounds: int, precision: str) -> tuple[dict[str, list[float]], dict[str, float | None]]:
    """step_time's timing, methods taking turns; the peak GPU memory of each method's runs (None on the CPU)."""
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    peak: dict[str, float | None] = {m: None for m in methods}
    for _ in range(rounds):
        for method in methods:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            seconds[method] += time_method(method, path, pooling, batches, tasks, warmup, precision)
            if torch.cuda.is_available():
                peak[method] = max(peak[method] or 0.0, torch.cuda.max_memory_allocated() / 2**20)
    return seconds, peak


def synthetic_corpus(passages: int, words: int, seed: int = 0) -> Corpus:
    """Passages of ``words`` words over a 2,000-word vocabulary (the tiny tokenizer's), ~6 per page."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(2000)])
    texts = [" ".join(row) for row in vocabulary[rng.integers(0, 2000, size=(passages, words))]]
    return Corpus(ids=[str(i) for i in range(passages)], texts=texts, titles=[""] * passages,
                  page_ids=[str(i // 6) for i in range(passages)])


def encode_and_search(passages: int, queries: int, workdir: Path, dry_run: bool) -> dict:
    """`multiret index`'s encoding of the corpus, then the IVF-PQ index searched on the GPU (on the CPU when dry)."""
    import kilt_scale

    corpus = synthetic_corpus(passages, 64)
    model_dir = build_tiny_t5(workdir / "encoder", [" ".join(f"w{i}" for i in range(2000))], d_model=64)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = BiEncoder(TextEncoder(str(model_dir), pooling="t5_decoder"), optimizer=lambda p: torch.optim.AdamW(p)).to(device)
    collator = PromptCollator(model.tokenizer, None, 96)
    factory, train_sample, search_parameters = kilt_scale.ivfpq_factory(passages, 64)
    start = time.perf_counter()
    trainer = kilt_scale.encoding_trainer("gpu" if device.type == "cuda" else "cpu")
    index = index_corpus(trainer, model, corpus, collator, workdir / "index", EncodingSettings(batch_size=1024), factory,
                         train_sample)
    encoded = time.perf_counter() - start
    if not dry_run:
        index.to_gpus()
    index.set_search_parameters(search_parameters)
    vectors = np.random.default_rng(1).standard_normal((queries, 64)).astype(np.float32)
    start = time.perf_counter()
    index.search(vectors, 100)
    searched = time.perf_counter() - start
    return {"passages": passages, "factory": factory, "on_gpu": index.on_gpu, "encode_and_build_seconds": round(encoded, 1),
            "passages_per_s": round(passages / encoded), "queries": queries, "search_seconds": round(searched, 3),
            "queries_per_s": round(queries / searched)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU at a tiny shape")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reference-steps", type=int, default=4, help="timed reference-style TACO steps (after one untimed)")
    parser.add_argument("--passages", type=int, default=1_000_000, help="synthetic passages encoded and indexed")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; use --dry-run to check the script on the CPU")
    shape, model, precision = (DRY_BATCH, "tiny-t5", "32-true") if args.dry_run else (PAPER_BATCH, "t5-base-shape", "bf16-mixed")
    passages = 2_000 if args.dry_run else args.passages
    methods = sorted(p.stem for p in METHOD_CONFIGS.glob("*.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path, pooling = model_path(model, workdir)
        vocab = TextEncoder(path, pooling=pooling).model.config.vocab_size
        steps = args.warmup + args.steps
        batches = random_batches(vocab, shape["tasks"], shape["queries"], shape["passages"], shape["query_length"],
                                 shape["passage_length"], steps)
        tasks = [TaskSpec(name=f"task{t}", train=None, dev=None) for t in range(shape["tasks"])]
        seconds, peak = method_steps(methods, path, pooling, batches, tasks, args.warmup, args.rounds, precision)
        reference = reference_taco_steps(path, pooling, batches[: 1 + args.reference_steps], 1, precision)
        medians = {m: statistics.median(s) for m, s in seconds.items()}
        report = {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)",
            "model": model, "precision": precision, "batch_per_device": shape, "steps_per_method": len(seconds["naive"]),
            "median_step_seconds": {m: round(s, 4) for m, s in medians.items()},
            "ratio_to_naive": {m: round(s / medians["naive"], 3) for m, s in medians.items()},
            "peak_gpu_mib": {m: None if v is None else round(v) for m, v in peak.items()},
            "reference_taco": {"median_step_seconds": round(statistics.median(reference), 4), "steps": len(reference),
                               "ratio_to_naive": round(statistics.median(reference) / medians["naive"], 3),
                               "ratio_to_taco": round(statistics.median(reference) / medians["taco"], 3)},
            "encode_and_search": encode_and_search(passages, 1_000 if args.dry_run else 10_000, workdir, args.dry_run),
        }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(json.dumps(report["ratio_to_naive"]), file=sys.stderr)


if __name__ == "__main__":
    main()
