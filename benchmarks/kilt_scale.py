"""Wall time, throughput and peak memory of every corpus-sized stage of the real pipeline, on a synthetic KILT.

    python benchmarks/kilt_scale.py --passages 500000 --out /tmp/kilt-500k.json
    python benchmarks/kilt_scale.py --fit /tmp/kilt-*.json          # growth per stage, 36M projection

Generates a KILT-shaped corpus (100-word passages of Zipf-distributed words over 1M types,
pages of ~6 passages, KILT's passage TSV) and task files in KILT's jsonl format (NQ, HotpotQA,
FEVER, T-REx and WoW with their typical query lengths, a gold page each), then runs, in this
process: `multiret prepare kilt` (passage store, task conversion, BM25 index, BM25 negatives;
one stage per step), corpus encoding with a tiny random T5 (``multiret.index.dense.index_corpus``,
the code of `multiret index`, given a one-byte ``PQ1x4`` index so that the stage is the
encoding), IVF-PQ training and adding (``DenseIndex.build`` on the saved embeddings), the
search of every training query, and model-based negative mining (``multiret.index.mining``).
The IVF-PQ index is conf/index/ivfpq.yaml's with its list count scaled to the corpus (a power
of two near sqrt(N), 30 training vectors per list as there) and 4 dimensions per PQ sub-vector.
On a shared machine, run with ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``: FAISS's and the
BLAS's spinning threads slowed its k-means ten-fold when other processes held the cores
(the JSON records these variables).

Each stage reports seconds, passages per second and peak anonymous memory (``RssAnon`` of
this process and its worker processes, sampled every 20 ms: memory-mapped files are left
out, as the kernel can drop their pages) and the anonymous memory when it started. One JSON
object goes to stdout and to ``--out``. With ``--fit``, the JSON files of several sizes give
each stage's growth exponent (log-log least squares, 1 = linear) and a projection to KILT's
36M passages.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

KILT_PASSAGES = 36_000_000
WORD_TYPES = 1_000_000
ZIPF_EXPONENT = 1.1
PASSAGE_WORDS = 100
TASKS = {"nq": 9, "hotpotqa": 18, "fever": 9, "trex": 4, "wow": 70}  # prepared task → typical query words (KILT's inputs)
SAMPLE_SECONDS = 0.02


def _word_strings() -> list[str]:
    """Word types as lowercase letter strings (what bm25s's tokenizer and a word-level tokenizer both keep whole)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    ranks = np.arange(WORD_TYPES)
    digits = [(ranks // 26**p) % 26 for p in range(5)]
    return ["".join(letters[d[i]] for d in digits[: max(2, math.ceil(math.log(i + 2, 26)))]) for i in ranks]


def write_kilt(folder: Path, passages: int, queries: int, seed: int = 0) -> dict[str, Any]:
    """The passage TSV and each task's train/dev jsonl (``queries`` train items, a tenth of that dev).

    A query is half words of its gold passage, half words drawn from the whole vocabulary, so
    that BM25 and the model have something to find.
    """
    rng = np.random.default_rng(seed)
    words = _word_strings()
    cdf = np.cumsum(1.0 / np.arange(1, WORD_TYPES + 1) ** ZIPF_EXPONENT)
    cdf /= cdf[-1]
    sizes = np.minimum(rng.geometric(1 / 6, size=passages), 40)
    pages = np.repeat(np.arange(passages), sizes)[:passages] + 1000  # page of each passage, in order
    is_first = np.r_[True, pages[1:] != pages[:-1]]
    paragraphs = np.arange(passages) - np.flatnonzero(is_first)[np.cumsum(is_first) - 1]
    items = [(task, split, i) for task in TASKS for split, count in (("train", queries), ("dev", max(1, queries // 10)))
             for i in range(count)]
    gold_rows = rng.integers(0, passages, size=len(items))
    order = np.argsort(gold_rows, kind="stable")
    texts: dict[tuple[str, str, int], str] = {}

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return np.searchsorted(cdf, rng.random(shape))

    folder.mkdir(parents=True, exist_ok=True)
    cursor = 0
    with (folder / "passages.tsv").open("w", encoding="utf-8") as handle:
        handle.write("id\ttext\ttitle\twikipedia_id\n")
        for start in range(0, passages, 10_000):
            block = draw((min(10_000, passages - start), PASSAGE_WORDS))
            for row, ids in enumerate(block, start):
                page = int(pages[row])
                handle.write(f"{page}_{paragraphs[row]}\t{' '.join(words[w] for w in ids)}\t{words[page % WORD_TYPES]}\t{page}\n")
            while cursor < len(order) and gold_rows[order[cursor]] < start + len(block):
                item = items[order[cursor]]
                length = TASKS[item[0]]
                own = block[gold_rows[order[cursor]] - start, rng.choice(PASSAGE_WORDS, size=max(1, length // 2), replace=False)]
                query = [words[w] for w in np.concatenate([draw((length - len(own),)), own])]
                if item[0] == "trex":  # "subject [SEP] relation"
                    query.insert(1, "[SEP]")
                texts[item] = " ".join(query)
                cursor += 1
    kilt = folder / "kilt"
    kilt.mkdir(exist_ok=True)
    handles = {}
    try:
        for position, item in enumerate(items):
            task, split, i = item
            if (task, split) not in handles:
                handles[task, split] = (kilt / f"{task}-{split}-kilt.jsonl").open("w", encoding="utf-8")
            provenance = [{"wikipedia_id": str(int(pages[gold_rows[position]])), "title": "", "start_paragraph_id": 1,
                           "end_paragraph_id": 1}]
            record = {"id": f"{task}-{split}-{i}", "input": texts[item], "output": [{"answer": "x", "provenance": provenance}]}
            handles[task, split].write(json.dumps(record) + "\n")
    finally:
        for handle in handles.values():
            handle.close()
    return {"pages": int(is_first.sum()), "queries": len(items), "tsv_mib": round((folder / "passages.tsv").stat().st_size / 2**20, 1)}


def _anonymous_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            return next((int(line.split()[1]) for line in handle if line.startswith("RssAnon:")), 0)
    except OSError:  # the process ended between listing and reading
        return 0


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (worker processes spawned by the BM25 build, for instance)."""
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as handle:
                    stack.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return tree


class MemoryTimeline:
    """Anonymous resident memory of this process tree, sampled in a thread: ``(time, MiB)`` pairs."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        return sum(_anonymous_kib(pid) for pid in _process_tree(os.getpid())) / 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.now()))
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> MemoryTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> float:
        return max((mib for t, mib in self.samples if start <= t <= end), default=self.now())

    def at(self, moment: float) -> float:
        return next((mib for t, mib in self.samples if t >= moment), self.now())


class Stages:
    """Per-stage seconds, passages/s and memory, read off one timeline."""

    def __init__(self, timeline: MemoryTimeline, passages: int) -> None:
        self.timeline, self.passages = timeline, passages
        self.results: dict[str, dict[str, Any]] = {}

    def record(self, name: str, start: float, end: float, **extra: Any) -> None:
        seconds = end - start
        self.results[name] = {"seconds": round(seconds, 2), "passages_per_s": round(self.passages / seconds, 1) if seconds else None,
                              "peak_anon_mib": round(self.timeline.peak(start, end), 1),
                              "start_anon_mib": round(self.timeline.at(start), 1), **extra}
        print(f"{name}: {self.results[name]}", file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str, **extra: Any) -> Iterator[dict[str, Any]]:
        """Time the block; what it adds to the yielded dict joins the stage's figures."""
        start = time.perf_counter()
        yield extra
        self.record(name, start, time.perf_counter(), **extra)


class _StepMarks(logging.Handler):
    """When each `prepare kilt` step starts, from its "step <name>: running" log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "step %s: running":
            self.marks.append((str(record.args[0]), time.perf_counter()))


def run_prepare(stages: Stages, folder: Path, workers: int | None) -> Path:
    """`multiret prepare kilt` on the generated files, one stage per step (``prepare:<step>``)."""
    from multiret.prepare import pipeline

    marks = _StepMarks()
    logger = logging.getLogger(pipeline.__name__)
    logger.addHandler(marks)
    previous = logger.level
    logger.setLevel(logging.INFO)
    out = folder / "prepared"
    try:
        pipeline.prepare_kilt(folder / "kilt", folder / "passages.tsv", out, tasks=list(TASKS), max_train={},
                              show_progress=False, workers=workers)
    finally:
        logger.removeHandler(marks)
        logger.setLevel(previous)
    end = time.perf_counter()
    for (name, start), (_, stop) in zip(marks.marks, [*marks.marks[1:], ("", end)]):
        stages.record(f"prepare:{name}", start, stop)
    return out


def ivfpq_factory(passages: int, dim: int) -> tuple[str, int, str]:
    """conf/index/ivfpq.yaml's index scaled to the corpus: (factory, training sample, search parameters)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "index" / "ivfpq.yaml")
    lists = 2 ** max(4, round(math.log2(math.sqrt(passages))))
    per_list = conf.train_sample / int(str(conf.factory).split(",")[0].removeprefix("IVF"))
    nprobe = min(int(str(conf.search_parameters).split("=")[1]), lists)
    pq_options = re.fullmatch(r"PQ\d+(.*)", str(conf.factory).split(",")[1]).group(1)  # e.g. "np" (no polysemous training)
    return f"IVF{lists},PQ{dim // 4}{pq_options}", min(passages, math.ceil(per_list * lists)), f"nprobe={nprobe}"


def run_dense(stages: Stages, prepared: Path, workdir: Path, batch_size: int, depth: int, keep: int,
              factory: str | None) -> None:
    """Encode the corpus into the IVF-PQ index, rebuild the index alone, search every query, mine negatives."""
    import torch
    from omegaconf import OmegaConf

    from multiret.data.collator import PromptCollator
    from multiret.data.kilt import read_queries
    from multiret.data.store import PassageStore
    from multiret.data.tasks import TaskSpec
    from multiret.index.dense import index_corpus, search_tasks
    from multiret.index.encoding_settings import EncodingSettings
    from multiret.index.mining import mine_negatives
    from multiret.index.sharded import build_from_shards
    from multiret.model.biencoder import BiEncoder
    from multiret.model.encoder import TextEncoder
    from multiret.prepare.kilt_tasks import KILT_DATA_CONFIG, KILT_TASKS
    from multiret.testing import build_tiny_t5

    store = PassageStore(prepared / "passages")
    model_dir = build_tiny_t5(workdir / "tiny-t5", (store.passage_text(r) for r in range(min(len(store), 2_000))))
    model = BiEncoder(TextEncoder(str(model_dir), pooling="t5_decoder"), optimizer=lambda params: torch.optim.AdamW(params))
    kilt = OmegaConf.load(KILT_DATA_CONFIG).tasks  # the prompts and query lengths of the KILT tasks (their one home)
    collator = PromptCollator(model.tokenizer, None, kilt.nq.max_query_length * 5)
    dim = int(model.query_encoder.model.config.d_model)
    scaled, train_sample, search_parameters = ivfpq_factory(len(store), dim)
    factory = factory or scaled
    settings = {"factory": factory, "train_sample": train_sample, "search_parameters": search_parameters, "dim": dim}
    with stages.stage("encode", dim=dim, batch_size=batch_size):
        index_corpus(encoding_trainer("cpu"), model, store, collator, workdir / "index", EncodingSettings(batch_size=batch_size),
                     "PQ1x4", 1_000)
    with stages.stage("ivfpq_train_add", **settings):
        index = build_from_shards(workdir / "index", store, 1, factory, train_sample)
    index.set_search_parameters(search_parameters)
    tasks = [TaskSpec(name=t, train=str(prepared / KILT_TASKS[t].prepared_file("train")), dev=None,
                      prompt=kilt[t].prompt, max_query_length=kilt[t].max_query_length) for t in TASKS]
    queries = {t.name: read_queries(t.train) for t in tasks}
    count = sum(len(q) for q in queries.values())
    with stages.stage("ivfpq_search", queries=count, top_k=depth):
        search_tasks(model, index, collator, tasks, queries, depth, batch_size, show_progress=False)
    with stages.stage("mining", queries=count, depth=depth, keep=keep):
        mine_negatives(model, index, store, collator, tasks, queries, workdir / "mined", depth, keep, batch_size)


def encoding_trainer(accelerator: str) -> Any:
    """One process that encodes a corpus as `multiret index` does: its shard writer, no logger, no checkpoints."""
    import lightning as L

    from multiret.index.sharded import ShardWriter

    return L.Trainer(accelerator=accelerator, devices=1, callbacks=[ShardWriter()], logger=False,
                     enable_checkpointing=False, enable_progress_bar=False)


def measure(passages: int, queries: int, workers: int | None, batch_size: int, depth: int, keep: int,
            factory: str | None, workdir: Path) -> dict[str, Any]:
    with MemoryTimeline() as timeline:
        stages = Stages(timeline, passages)
        with stages.stage("generate") as extra:
            extra.update(write_kilt(workdir, passages, queries))
        prepared = run_prepare(stages, workdir, workers)
        run_dense(stages, prepared, workdir, batch_size, depth, keep, factory)
    return {"passages": passages, "queries_per_task": queries, "tasks": list(TASKS), "workers": workers or os.cpu_count(),
            "cpus": os.cpu_count(), "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
            "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
            "stages": stages.results}


def fit(paths: list[Path]) -> dict[str, Any]:
    """Per stage: the exponent of seconds and of peak memory growth in the corpus size, and their 36M projections."""
    runs = sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["passages"])
    sizes = np.log([r["passages"] for r in runs])
    out: dict[str, Any] = {"sizes": [r["passages"] for r in runs], "projection_to": KILT_PASSAGES, "stages": {}}
    for name in runs[-1]["stages"]:
        if name == "generate" or any(name not in r["stages"] for r in runs):
            continue
        entry = {}
        for key in ("seconds", "peak_anon_mib"):
            values = np.log([max(r["stages"][name][key], 1e-3) for r in runs])
            slope, intercept = np.polyfit(sizes, values, 1) if len(runs) > 1 else (1.0, values[0] - sizes[0])
            entry[f"{key}_exponent"] = round(float(slope), 2)
            entry[f"{key}_projected_36m"] = round(float(np.exp(intercept + slope * math.log(KILT_PASSAGES))), 1)
        out["stages"][name] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000, help="synthetic passages (default 100k)")
    parser.add_argument("--queries", type=int, default=1_000, help="training queries per task (dev: a tenth); 5 tasks")
    parser.add_argument("--workers", type=int, default=None, help="prepare kilt's BM25 processes (default: every core)")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per encoding batch")
    parser.add_argument("--depth", type=int, default=110, help="passages searched per query (conf/train.yaml mine_depth)")
    parser.add_argument("--keep", type=int, default=64, help="mined negatives kept per query (conf/train.yaml mine_top_k)")
    parser.add_argument("--factory", default=None, help="FAISS factory instead of conf/index/ivfpq.yaml's scaled to the corpus")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    report(args, fit, lambda workdir: measure(args.passages, args.queries, args.workers, args.batch_size, args.depth, args.keep,
                                             args.factory, workdir))


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workdir``, ``--out`` and ``--fit``, as :func:`report` reads them."""
    parser.add_argument("--workdir", type=Path, default=None, help="where the corpus and outputs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--fit", type=Path, nargs="+", help="instead: fit growth over these JSON files of earlier runs")


def report(args: argparse.Namespace, fit_runs: Callable[[list[Path]], dict], measure_in: Callable[[Path], dict]) -> None:
    """The fit of ``--fit``'s files, or a measurement in ``--workdir`` (else a temporary folder): JSON to stdout and ``--out``."""
    if args.fit:
        result = fit_runs(args.fit)
    elif args.workdir is not None:
        result = measure_in(args.workdir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure_in(Path(tmp))
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
