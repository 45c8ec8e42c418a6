"""Lucene BM25 through Pyserini, for ``benchmarks/bm25_scale.py`` (runs in Pyserini's own environment, not multiret's).

    JAVA_HOME=<a JDK 21+> OPENAI_API_KEY=unused /tmp/pyserini-venv/bin/python benchmarks/bm25_pyserini.py WORKDIR --threads 1,2

Reads ``WORKDIR/lucene-docs/`` (JsonCollection, one pre-tokenised passage per line, id = row)
and ``WORKDIR/lucene-queries.json`` (``{task: [space-joined query tokens]}``), indexes with
Lucene's whitespace analyzer (so the words are multiret's tokens, not Lucene's), searches each
task with BM25 k1=0.9, b=0.4 (bm25s's "lucene" formula; Lucene stores document lengths in one
byte, so scores differ slightly) and writes ``WORKDIR/lucene-result.json``: index seconds, per
thread count and task the search seconds, and the rows of the first thread count's hits. The
dummy ``OPENAI_API_KEY`` only satisfies an import-time check of Pyserini 1.6's ``pyserini.search``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--threads", default="1,2", help="comma-separated search thread counts")
    parser.add_argument("--index-threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=30)
    args = parser.parse_args()
    index = args.workdir / "lucene-index"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pyserini.index.lucene", "--collection", "JsonCollection", "--input",
                    str(args.workdir / "lucene-docs"), "--index", str(index), "--generator", "DefaultLuceneDocumentGenerator",
                    "--threads", str(args.index_threads), "--pretokenized"], check=True, stdout=subprocess.DEVNULL)
    indexed = time.perf_counter() - start

    from pyserini.search.lucene import LuceneSearcher  # noqa: I001 (first: it puts Anserini's jar on the class path)

    from jnius import autoclass

    searcher = LuceneSearcher(str(index))
    searcher.set_analyzer(autoclass("org.apache.lucene.analysis.core.WhitespaceAnalyzer")())
    searcher.set_bm25(0.9, 0.4)
    queries = json.loads((args.workdir / "lucene-queries.json").read_text(encoding="utf-8"))
    seconds: dict[str, dict[str, float]] = {}
    rows: dict[str, list[list[int]]] = {}
    for count in [int(t) for t in args.threads.split(",")]:
        seconds[str(count)] = {}
        for task, texts in queries.items():
            ids = [str(i) for i in range(len(texts))]
            searcher.batch_search(texts[:20], ids[:20], k=args.k, threads=count)  # JIT warm-up
            start = time.perf_counter()
            hits = searcher.batch_search(texts, ids, k=args.k, threads=count)
            seconds[str(count)][task] = time.perf_counter() - start
            rows.setdefault(task, [[int(h.docid) for h in hits[i]] for i in ids])
    result = {"index_seconds": indexed, "search_seconds": seconds, "rows": rows}
    (args.workdir / "lucene-result.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
