"""A BM25 index over the whole passage store, built in chunks, and the hard negatives mined from it.

``bm25s.BM25.index`` wants every tokenised passage in memory at once (lists of Python ints),
which KILT's 36M passages do not fit. This builds the same index (bm25s's ``lucene`` variant,
k1=0.9, b=0.4 as :class:`multiret.index.bm25.BM25Retriever`) in two streamed passes: bm25s's
streaming tokenizer writes each passage's distinct token ids and counts to scratch files while
document frequencies accumulate; then the scores are scattered into bm25s's on-disk CSC
arrays, a chunk at a time. The folder loads with ``bm25s.BM25.load(folder, mmap=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer
from tqdm.auto import tqdm

from multiret.data.jsonl import atomic_write_text
from multiret.data.kilt import Query
from multiret.prepare.files import atomic_output
from multiret.prepare.passages import PassageStore

logging.getLogger("bm25s").setLevel(logging.WARNING)

_CHUNK = 50_000
_STOPWORDS = "en"


def build_bm25_index(
    store: PassageStore, out: str | os.PathLike[str], k1: float = 0.9, b: float = 0.4,
    chunk: int = _CHUNK, show_progress: bool = True,
) -> dict:
    """Write a bm25s index of every passage into ``out`` (through ``<out>.tmp``); returns its size."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(store)
    tokenizer = Tokenizer(stopwords=_STOPWORDS)
    df = np.zeros(0, dtype=np.int64)
    with (tmp / "tokens.i32").open("wb") as tokens_file, (tmp / "tf.u16").open("wb") as tf_file, \
            (tmp / "distinct.i32").open("wb") as distinct_file, (tmp / "length.i32").open("wb") as length_file, \
            tqdm(total=n, desc="BM25 tokenize", unit="passage", disable=not show_progress) as bar:
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            docs = list(tokenizer.streaming_tokenize([store.passage_text(r) for r in range(start, end)], update_vocab=True))
            lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
            flat = np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=int(lengths.sum()))
            vocab = len(tokenizer.word_to_id)
            keys = np.repeat(np.arange(len(docs), dtype=np.int64), lengths) * vocab + flat
            distinct_keys, tf = np.unique(keys, return_counts=True)
            doc, token = np.divmod(distinct_keys, vocab)
            token.astype(np.int32).tofile(tokens_file)
            np.minimum(tf, np.iinfo(np.uint16).max).astype(np.uint16).tofile(tf_file)
            np.bincount(doc, minlength=len(docs)).astype(np.int32).tofile(distinct_file)
            lengths.astype(np.int32).tofile(length_file)
            if len(df) < vocab:
                df = np.concatenate([df, np.zeros(vocab - len(df), dtype=np.int64)])
            df += np.bincount(token, minlength=vocab)
            bar.update(end - start)
    _scatter_scores(tmp, n, df, k1, b, chunk, show_progress)
    vocab_dict = tokenizer.word_to_id
    with atomic_output(tmp / "vocab.index.json") as handle:  # streamed: one json.dumps of millions of words doubles the peak
        handle.write("{")
        handle.writelines(f"{',' if i else ''}{json.dumps(word, ensure_ascii=False)}:{wid}" for i, (word, wid) in enumerate(vocab_dict.items()))
        handle.write("}")
    params = {"k1": k1, "b": b, "delta": 0.5, "method": "lucene", "idf_method": "lucene", "dtype": "float32",
              "int_dtype": "int32", "num_docs": n, "version": bm25s.__version__, "backend": "numpy"}
    atomic_write_text(tmp / "params.index.json", json.dumps(params, indent=2))
    info = {"passages": n, "vocabulary": len(vocab_dict), "postings": int(df.sum()),
            "bytes": sum(p.stat().st_size for p in tmp.iterdir())}
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return info


def _scatter_scores(folder: Path, n: int, df: np.ndarray, k1: float, b: float, chunk: int, show_progress: bool) -> None:
    """Second pass: BM25 weight of every (passage, token) written into token-major CSC arrays."""
    lengths = np.fromfile(folder / "length.i32", dtype=np.int32)
    distinct = np.fromfile(folder / "distinct.i32", dtype=np.int32)
    average_length = float(lengths.mean())
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
    np.save(folder / "indptr.csc.index.npy", indptr)
    nnz = int(indptr[-1])
    data = np.lib.format.open_memmap(folder / "data.csc.index.npy", mode="w+", dtype=np.float32, shape=(nnz,))
    indices = np.lib.format.open_memmap(folder / "indices.csc.index.npy", mode="w+", dtype=np.int32, shape=(nnz,))
    tokens = np.memmap(folder / "tokens.i32", dtype=np.int32, mode="r") if nnz else np.zeros(0, np.int32)
    tfs = np.memmap(folder / "tf.u16", dtype=np.uint16, mode="r") if nnz else np.zeros(0, np.uint16)
    doc_starts = np.concatenate([[0], np.cumsum(distinct, dtype=np.int64)])
    cursor = indptr[:-1].copy()
    with tqdm(total=n, desc="BM25 scores", unit="passage", disable=not show_progress) as bar:
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            lo, hi = doc_starts[start], doc_starts[end]
            token = np.asarray(tokens[lo:hi], dtype=np.int64)
            tf = np.asarray(tfs[lo:hi], dtype=np.float64)
            doc = np.repeat(np.arange(start, end, dtype=np.int64), distinct[start:end])
            norm = k1 * ((1 - b) + b * lengths[doc] / average_length)
            score = (idf[token] * tf / (norm + tf)).astype(np.float32)
            order = np.argsort(token, kind="stable")
            token_sorted = token[order]
            unique, first, count = np.unique(token_sorted, return_index=True, return_counts=True)
            rank = np.arange(len(token_sorted)) - np.repeat(first, count)
            position = cursor[token_sorted] + rank
            data[position] = score[order]
            indices[position] = doc[order]
            cursor[unique] += count
            bar.update(end - start)
    data.flush()
    indices.flush()
    del data, indices, tokens, tfs
    for scratch in ("tokens.i32", "tf.u16", "distinct.i32", "length.i32"):
        (folder / scratch).unlink()


def load_bm25_index(folder: str | os.PathLike[str]) -> bm25s.BM25:
    """The index written by :func:`build_bm25_index`, memory-mapped."""
    return bm25s.BM25.load(str(folder), mmap=True)


def search(index: bm25s.BM25, texts: Sequence[str], k: int) -> np.ndarray:
    """Passage rows of the top-``k`` BM25 hits per text, best first."""
    tokens = bm25s.tokenize(list(texts), stopwords=_STOPWORDS, return_ids=False, show_progress=False)
    rows, _ = index.retrieve(tokens, k=k, show_progress=False, n_threads=0)
    return np.asarray(rows)


def mine_negatives(
    index: bm25s.BM25, store: PassageStore, task: str, queries: list[Query], top_k: int, out: str | os.PathLike[str],
    batch: int = 5_000, show_progress: bool = True,
) -> dict[str, int]:
    """Write ``{"id", "negatives": [passage ids]}`` per query: its top-``top_k`` BM25 passages minus those of its gold pages.

    The file is the one ``data.negatives_dir`` reads (:func:`multiret.data.negatives.read_negatives`).
    """
    k = min(top_k, len(store))
    counts = {"queries": len(queries), "negatives": 0, "empty": 0}
    with atomic_output(out) as handle, tqdm(total=len(queries), desc=f"BM25 negatives {task}", disable=not show_progress) as bar:
        for start in range(0, len(queries), batch):
            part = queries[start:start + batch]
            for query, rows in zip(part, search(index, [q.text for q in part], k)):
                gold = set(query.gold_pages)
                negatives = [store.ids[int(r)] for r in rows if store.page_ids[int(r)] not in gold]
                counts["negatives"] += len(negatives)
                counts["empty"] += not negatives
                handle.write(json.dumps({"id": query.qid, "negatives": negatives}, ensure_ascii=False) + "\n")
            bar.update(len(part))
    return counts

