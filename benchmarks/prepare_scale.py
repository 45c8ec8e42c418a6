"""Disk, time and peak memory of `multiret prepare kilt`'s corpus steps on a synthetic KILT-like corpus.

    python benchmarks/prepare_scale.py --passages 200000 --json

Writes a passage TSV of 100-word passages (words drawn from a Zipf law over 1M word types,
~6 passages per page), then runs the passage store and the BM25 index each in a fresh
process and prints ``{step: {seconds, peak_rss_mib, peak_anonymous_mib, disk_mib}}`` (the
anonymous peak is sampled every 50 ms and leaves out memory-mapped file pages, which the
kernel can drop). Scale linearly to KILT's
36M passages to plan a real run (docs/data-preparation.md does so).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def write_corpus(path: Path, passages: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    types = 1_000_000
    weights = 1.0 / np.arange(1, types + 1) ** 1.1
    weights /= weights.sum()
    with path.open("w", encoding="utf-8") as handle:
        handle.write("id\ttext\ttitle\twikipedia_id\n")
        for start in range(0, passages, 10_000):
            count = min(10_000, passages - start)
            words = rng.choice(types, size=(count, 100), p=weights)
            for i, row in enumerate(words):
                pid = start + i
                handle.write(f"{pid}\t{' '.join(f't{w}' for w in row)}\tPage {pid // 6}\t{pid // 6}\n")


def _anonymous_mib() -> float:
    """Resident memory that is not file-backed (memory-mapped files count in RSS but are reclaimable cache)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_step(step: str, tsv: Path, folder: Path) -> dict:
    from multiret.prepare.bm25_index import build_bm25_index
    from multiret.prepare.passages import PassageStore, build_passage_store

    peak = [_anonymous_mib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _anonymous_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    if step == "store":
        info = build_passage_store(tsv, folder / "passages", show_progress=False)
        out = folder / "passages"
    else:
        info = build_bm25_index(PassageStore(folder / "passages"), folder / "bm25", show_progress=False)
        out = folder / "bm25"
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_anonymous_mib": round(max(peak[0], _anonymous_mib())),
        "disk_mib": round(sum(p.stat().st_size for p in out.iterdir()) / 2**20, 1),
        **{k: v for k, v in info.items() if k in ("pages", "vocabulary", "postings")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=200_000, help="synthetic passages (default 200k)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--step", choices=["store", "bm25"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.folder / "passages.tsv", args.folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_corpus(folder / "passages.tsv", args.passages)
        results = {"passages": args.passages,
                   "tsv_mib": round((folder / "passages.tsv").stat().st_size / 2**20, 1)}
        for step in ("store", "bm25"):
            done = subprocess.run([sys.executable, __file__, "--step", step, "--folder", str(folder)],
                                  check=True, capture_output=True, text=True)
            results[step] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
