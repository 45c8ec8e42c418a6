"""Items per second and peak memory of `multiret prepare dpr` on synthetic multikilt files of growing size.

    python benchmarks/prepare_dpr.py --items 100000,300000,1000000 --out prepare-dpr.json

Writes a synthetic passage TSV (KILT's 6 columns) and, per size, one gzip multikilt file shaped
as the reference's (a question, 1 positive, 5 negative and 5 hard negative contexts of 100 words
each, int ``psg_id`` into the passage file), then runs, in a fresh process per size, the task
step of ``multiret prepare dpr`` (:func:`multiret.prepare.dpr.convert_dpr_split` over a passage
store built once). Each process reports its seconds, items per second, and its peak resident
memory (``ru_maxrss``) above what it held before the step (imports and the mapped store): a
streamed reader keeps that figure flat across sizes. ``store_lookup`` times the step's id
lookups (``PassageStore.find``, 20,000 random ids, median of 5 interleaved rounds) over the
store's arrays as ``np.memmap`` objects (how the store mapped them before) and as the plain
ndarray views of the same maps it uses now. One JSON object goes to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSAGES = 200_000
CONTEXT_WORDS = 100
HARD_NEGATIVES = 5


def write_passages(path: Path, passages: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("id\ttext\twikipedia_title\twikipedia_id\tstart_paragraph_id\tend_paragraph_id\n")
        for i in range(1, passages + 1):
            handle.write(f"{i}\tpassage {i} text\tPage {i // 5}\t{i // 5}\t{i % 5}\t{i % 5}\n")


def write_items(path: Path, items: int, passages: int, seed: int = 0) -> None:
    """One JSON array, written item by item (the generator holds one item too)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(5000)]
    text = " ".join(rng.choices(words, k=CONTEXT_WORDS))

    def ctx() -> dict:
        pid = rng.randrange(1, passages + 1)
        return {"title": f"Page {pid // 5}", "text": text, "score": round(rng.random() * 30, 3), "psg_id": pid}

    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as handle:
        handle.write("[")
        for i in range(items):
            item = {"question": " ".join(rng.choices(words, k=9)), "answers": ["an answer"], "positive_ctxs": [ctx()],
                    "negative_ctxs": [ctx() for _ in range(HARD_NEGATIVES)],
                    "hard_negative_ctxs": [ctx() for _ in range(HARD_NEGATIVES)]}
            handle.write(("," if i else "") + json.dumps(item))
        handle.write("]")


def child(source: Path, store: Path, out: Path, passages: Path) -> dict:
    """The task step over ``source``, in this (fresh) process: seconds, items/s, peak memory above the start."""
    from multiret.data.store import PassageStore
    from multiret.prepare.dpr import _Converter, convert_dpr_split
    from multiret.prepare.kilt_tasks import KILT_TASKS

    converter = _Converter(KILT_TASKS["nq"], PassageStore(store), passages, 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    counts = convert_dpr_split(converter, source, out, "train", 1, show_progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    items = counts["train"]["items"]
    return {"items": items, "kept": counts["train"]["kept"], "seconds": round(seconds, 2), "items_per_s": round(items / seconds),
            "rss_before_mib": round(before / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
            "peak_above_start_mib": round((peak - before) / 1024, 1), "file_mib": round(source.stat().st_size / 2**20, 1)}


def lookup_ratio(store: Path, passages: int, lookups: int = 20_000, rounds: int = 5) -> dict:
    """Seconds of ``lookups`` id lookups over memmap objects and over ndarray views of the same files."""
    import numpy as np

    from multiret.data import store as stored

    def as_memmap(path: Path, dtype: type) -> np.ndarray:
        return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)

    views = stored.PassageStore(store)
    original, stored.map_array = stored.map_array, as_memmap
    try:
        memmaps = stored.PassageStore(store)
    finally:
        stored.map_array = original
    rng = random.Random(1)
    ids = [str(rng.randrange(1, passages + 1)) for _ in range(lookups)]
    seconds: dict[str, list[float]] = {"memmap": [], "view": []}
    for _ in range(rounds):
        for name, candidate in (("memmap", memmaps), ("view", views)):
            start = time.perf_counter()
            for passage_id in ids:
                candidate.find(passage_id)
            seconds[name].append(time.perf_counter() - start)
    memmap, view = statistics.median(seconds["memmap"]), statistics.median(seconds["view"])
    return {"lookups": lookups, "memmap_s": round(memmap, 3), "view_s": round(view, 3), "memmap_over_view": round(memmap / view, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="100000,300000,1000000", help="comma-separated file sizes in items")
    parser.add_argument("--passages", type=int, default=PASSAGES, help=f"passages in the synthetic passage file (default {PASSAGES})")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--child", nargs=4, metavar=("SOURCE", "STORE", "OUT", "PASSAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*map(Path, args.child))))
        return
    from multiret.prepare.passages import build_passage_store

    results = {"passages": args.passages, "hard_negatives_per_item": HARD_NEGATIVES, "context_words": CONTEXT_WORDS, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_passages(tmp / "psgs.tsv", args.passages)
        build_passage_store(tmp / "psgs.tsv", tmp / "store", show_progress=False)
        results["store_lookup"] = lookup_ratio(tmp / "store", args.passages)
        for n in map(int, args.items.split(",")):
            source = tmp / f"nq-train-multikilt-{n}.json.gz"
            write_items(source, n, args.passages)
            (tmp / str(n)).mkdir()
            line = subprocess.run([sys.executable, __file__, "--child", str(source), str(tmp / "store"), str(tmp / str(n)),
                                   str(tmp / "psgs.tsv")], check=True, capture_output=True, text=True).stdout
            results["runs"].append(json.loads(line.strip().splitlines()[-1]))
            source.unlink()
            print(json.dumps(results["runs"][-1]), file=sys.stderr)
    runs = results["runs"]
    results["peak_above_start_ratio_largest_to_smallest"] = round(
        runs[-1]["peak_above_start_mib"] / max(runs[0]["peak_above_start_mib"], 0.1), 2)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
