"""Peak memory and seconds of loading a BEIR corpus: held in memory (as ``data=beir`` did) against the passage store.

    nice -n 10 python benchmarks/beir_store.py --docs 200000,800000 --out beir-store.json

Writes, per size, a synthetic BEIR ``corpus.jsonl`` (``doc<i>`` ids, a 3-word title and a 60-word
text of words drawn from 20,000, ~450 bytes a line), then loads it three ways, each in a fresh
process: ``memory`` builds the in-memory ``Corpus`` of the same rows as the reader before the
store did (a list of rows, then ``Corpus.from_rows``); ``build`` is the first load of
:func:`multiret.data.beir.read_dataset_corpus` (streams the file into a store and maps it);
``reuse`` is a later load (maps the store, the file unread). Each process looks 1,000 ids up and
reads their texts, then reports its seconds and two peaks above what it held before loading
(Python and the imports): anonymous memory (``RssAnon``, sampled every 20 ms by
``kilt_scale.MemoryTimeline``: Python objects and arrays, what a corpus costs in RAM) and resident
memory (``ru_maxrss``, which also counts the touched pages of the mapped store: the kernel can
drop those, and its fault-around maps up to 16 pages around each page read). One JSON object
goes to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kilt_scale import MemoryTimeline

WORDS = 20_000
TITLE_WORDS, TEXT_WORDS = 3, 60
LOOKUPS = 1_000


def write_corpus(folder: Path, docs: int, seed: int = 0) -> Path:
    """A BEIR-layout corpus file (the queries and judgements are not read by a corpus load)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(WORDS)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(docs):
            handle.write(json.dumps({"_id": f"doc{i}", "title": " ".join(rng.choices(words, k=TITLE_WORDS)),
                                     "text": " ".join(rng.choices(words, k=TEXT_WORDS))}) + "\n")
    return path


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def load(mode: str, folder: Path, store_dir: Path) -> dict:
    """One load in this process: seconds and peak RSS above the start."""
    from multiret.data.beir import PAGE_KEY, DatasetFiles, iter_documents, read_dataset_corpus
    from multiret.data.corpus import Corpus

    with MemoryTimeline() as timeline:
        start_anon, start_kib, start = timeline.now(), peak_kib(), time.perf_counter()
        if mode == "memory":
            rows = [(r.id, r.text, r.title, r.page) for r in iter_documents(DatasetFiles.of(folder, ""))]
            corpus = Corpus.from_rows(rows, page_key=PAGE_KEY)
        else:
            corpus = read_dataset_corpus(folder, store_dir=store_dir)
        rng = random.Random(1)
        texts = [corpus.texts[corpus.row(f"doc{rng.randrange(len(corpus))}")] for _ in range(LOOKUPS)]
        end = time.perf_counter()
    assert len(texts) == LOOKUPS
    return {"seconds": round(end - start, 2), "peak_anon_above_start_mib": round(timeline.peak(start, end) - start_anon, 1),
            "peak_rss_above_start_mib": round((peak_kib() - start_kib) / 1024, 1), "peak_rss_mib": round(peak_kib() / 1024, 1),
            "documents": len(corpus)}


def run_size(docs: int, work: Path) -> dict:
    folder, store_dir = work / f"beir-{docs}", work / f"stores-{docs}"
    corpus = write_corpus(folder, docs)
    result: dict = {"documents": docs, "corpus_mib": round(corpus.stat().st_size / 2**20, 1)}
    for mode in ("memory", "build", "reuse"):
        done = subprocess.run([sys.executable, __file__, "--load", mode, str(folder), str(store_dir)],
                              check=True, capture_output=True, text=True)
        result[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    result["store_mib"] = round(sum(p.stat().st_size for p in store_dir.rglob("*") if p.is_file()) / 2**20, 1)
    for mode in ("build", "reuse"):
        result[f"memory_anon_over_{mode}"] = round(result["memory"]["peak_anon_above_start_mib"]
                                                   / max(result[mode]["peak_anon_above_start_mib"], 0.1), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default="200000,800000", help="corpus sizes, comma-separated")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--load", nargs=3, metavar=("MODE", "FOLDER", "STORE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        mode, folder, store_dir = args.load
        print(json.dumps(load(mode, Path(folder), Path(store_dir))))
        return
    with tempfile.TemporaryDirectory(prefix="beir-store-") as work:
        sizes = [run_size(int(n), Path(work)) for n in args.docs.split(",")]
    report = {"benchmark": "beir_store", "python": sys.version.split()[0], "sizes": sizes}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
