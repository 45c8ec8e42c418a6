"""The top-k selection of BM25 negatives on score vectors that are mostly zeros, as real KILT queries give.

    python benchmarks/bm25_selection.py                       # 2M rows, k = 30; 0 to 99.9% zeros
    python benchmarks/bm25_selection.py --rows 500000 --k 100 --rounds 7

``multiret prepare kilt`` scores every passage for a query (bm25s's ``get_scores_from_ids``) and
takes the top k. A passage that shares no word with the query scores exactly 0, and after
stopwords a KILT query's words occur in a small share of the 36M passages, so most of the vector
is one repeated value, on which ``np.argpartition`` (bm25s's numpy selection, what ``search``
used) crawls. This times bm25s's selection against ours (``multiret.prepare.bm25_index.top_rows``:
among the non-zero rows where they are under half, equal scores by row) on synthetic vectors
with a given share of zeros (the rest uniform in [0.5, 1.5)), the two alternating round by
round; prints one JSON object with, per share, the median milliseconds of each, ``ratio`` =
bm25s / ours, and ``same_scores``: whether both put the same scores in the same order (their
rows can differ only among equal scores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from bm25s import selection

from multiret.prepare.bm25_index import top_rows


def full_vector(scores: np.ndarray, k: int) -> np.ndarray:
    """bm25s's numpy top-k over every row (what ``search`` did per query before ``top_rows``)."""
    return selection.topk(scores, k=k, backend="numpy", sorted=True)[1]


def measure(rows: int, zero_share: float, k: int, rounds: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    scores = rng.random(rows, dtype=np.float32) + np.float32(0.5)
    scores[rng.random(rows) < zero_share] = 0
    if np.count_nonzero(scores) < k:
        raise SystemExit(f"{zero_share:.2%} zeros leave fewer than k={k} non-zero rows of {rows}; lower the share or raise --rows")
    paths = {"full": full_vector, "ours": top_rows}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(rounds):
        for name in (("full", "ours") if round_ % 2 == 0 else ("ours", "full")):
            start = time.perf_counter()
            paths[name](scores, k)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"zero_share": zero_share, "bm25s_ms": 1e3 * medians["full"], "ours_ms": 1e3 * medians["ours"],
            "ratio": medians["full"] / medians["ours"],
            "same_scores": bool(np.array_equal(scores[full_vector(scores, k)], scores[top_rows(scores, k)]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="passages (length of the score vector)")
    parser.add_argument("--k", type=int, default=30, help="rows selected (prepare kilt's --bm25-top-k default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--zero-shares", default="0,0.3,0.5,0.7,0.9,0.99,0.999", help="comma-separated shares of zero scores")
    args = parser.parse_args()
    results = [measure(args.rows, float(share), args.k, args.rounds) for share in args.zero_shares.split(",")]
    print(json.dumps({"rows": args.rows, "k": args.k, "rounds": args.rounds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
