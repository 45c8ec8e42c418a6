"""BM25 index build and BM25 negatives of `multiret prepare kilt`, one worker process against several, interleaved.

    python benchmarks/bm25_workers.py --passages 100000 --workers 1,2 --rounds 1

On benchmarks/kilt_scale.py's synthetic KILT (100-word passages, five tasks' queries), builds
the index and mines every task's negatives with each worker count in turn, ``rounds`` times
in A B B A order (so a slow spell of a shared machine hits both), checks that every count
wrote byte-identical files, and prints JSON: median seconds per count, their ratio to one
worker, and a projection to KILT's 36M passages on a 32-core node. The projection fits
Amdahl's law to the first two counts (serial part ``s`` and parallel part ``p`` in core-seconds
per passage) and scales linearly in passages (and, for negatives, in passages × queries, at
the ~0.7M prepared training queries of KILT with T-REx and zsRE capped at 100k); it is a
projection, not a measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kilt_scale import KILT_PASSAGES, TASKS, write_kilt

from multiret.data.kilt import read_queries
from multiret.data.store import PassageStore
from multiret.prepare.bm25_index import BM25Searcher, build_bm25_index
from multiret.prepare.negatives import mine_negatives
from multiret.prepare.passages import build_passage_store

KILT_TRAIN_QUERIES = 700_000
NODE_CORES = 32


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def run(store: PassageStore, kilt: Path, out: Path, workers: int, tasks: list[str]) -> dict[str, float | str]:
    start = time.perf_counter()
    build_bm25_index(store, out / "bm25", show_progress=False, workers=workers)
    built = time.perf_counter()
    with BM25Searcher(out / "bm25", workers) as searcher:
        for task in tasks:
            mine_negatives(searcher, store, task, read_queries(kilt / f"{task}-train-kilt.jsonl"), 30,
                           out / "negatives" / f"{task}.jsonl", show_progress=False)
    return {"build": built - start, "negatives": time.perf_counter() - built, "digest": _digest(out)}


def project(seconds: dict[int, float], scale: float) -> float:
    """Seconds at ``scale`` × the measured work on NODE_CORES cores, from Amdahl's law fitted to the two lowest counts."""
    (w1, t1), (w2, t2) = sorted(seconds.items())[:2]
    parallel = max(0.0, (t1 - t2) / (1 / w1 - 1 / w2))
    serial = max(0.0, t1 - parallel / w1)
    return round(scale * (serial + parallel / NODE_CORES), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000, help="training queries per task (5 tasks)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    parser.add_argument("--rounds", type=int, default=1, help="A B B A rounds")
    parser.add_argument("--build-only", action="store_true", help="time the index build alone (no negatives)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_kilt(folder, args.passages, args.queries)
        build_passage_store(folder / "passages.tsv", folder / "store", show_progress=False)
        store = PassageStore(folder / "store")
        times: dict[int, dict[str, list[float]]] = {w: {"build": [], "negatives": []} for w in counts}
        digests = set()
        for _ in range(args.rounds):
            for w in counts + counts[::-1]:
                result = run(store, folder / "kilt", folder / f"out-{w}", w, [] if args.build_only else list(TASKS))
                digests.add(result["digest"])
                for key in ("build", "negatives"):
                    times[w][key].append(result[key])
                print(f"workers {w}: {result}", file=sys.stderr, flush=True)
    queries = len(TASKS) * args.queries
    medians = {key: {w: statistics.median(times[w][key]) for w in counts} for key in ("build", "negatives")}
    report = {
        "passages": args.passages, "queries": queries, "rounds": args.rounds, "identical_files": len(digests) == 1,
        "seconds": {key: {str(w): round(s, 2) for w, s in values.items()} for key, values in medians.items()},
        "ratio_to_first": {key: {str(w): round(values[counts[0]] / s, 2) for w, s in values.items()} for key, values in medians.items()},
        f"projection_36m_{NODE_CORES}_cores_seconds": {
            "build": project(medians["build"], KILT_PASSAGES / args.passages),
            "negatives": project(medians["negatives"], KILT_PASSAGES / args.passages * KILT_TRAIN_QUERIES / queries),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
