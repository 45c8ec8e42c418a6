"""A BM25 index over the whole passage store, built in chunks on every core, and the hard negatives mined from it.

``bm25s.BM25.index`` wants every tokenised passage in memory at once (lists of Python ints),
which KILT's 36M passages do not fit. This builds the same index (bm25s's ``lucene`` variant,
with the :class:`multiret.index.bm25.BM25Settings` it is given) in two streamed passes, each
spread over ``workers`` processes (default: every core):

1. Worker processes tokenise chunks of passages with bm25s's tokenizer, each chunk with a
   vocabulary of its own; this process renumbers each chunk's words in chunk order, so a
   word's id is its rank of first appearance, as one tokenizer streaming the whole store
   would give, and writes every passage's distinct token ids and counts to scratch files
   while document frequencies accumulate.
2. The scores are scattered into bm25s's on-disk CSC arrays: each worker owns a range of
   token ids (ranges of about equal postings), reads the scratch files a chunk at a time and
   fills its range's part of the arrays, passages in order within each token.

Neither pass's result depends on the number of workers: the files are byte-identical to the
one-process build. The folder loads with ``bm25s.BM25.load(folder, mmap=True)``. Negatives
(:mod:`multiret.prepare.negatives`) are scored by :class:`BM25Searcher` in worker processes that
map the index's arrays (shared page cache) but not its vocabulary, or with ``backend="numba"`` in
threads of this process (:mod:`multiret.prepare.bm25_numba`); only this process holds the
vocabulary, to turn queries into token ids.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from itertools import chain, islice
from pathlib import Path

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer
from tqdm.auto import tqdm

from multiret.atomic import atomic_file, atomic_folder, atomic_write_text
from multiret.data.store import PassageStore
from multiret.errors import UserError
from multiret.index.bm25 import DEFAULT_BM25, BM25Settings
from multiret.prepare import bm25_numba
from multiret.prepare.parallel import ordered_map, resolve_workers

logging.getLogger("bm25s").setLevel(logging.WARNING)

_CHUNK = 50_000
_STOPWORDS = "en"
_SEARCH_BATCH = 64  # queries a worker scores per task
SELECTION = "non-zero scores, best first, equal scores by row"  # top_rows's rule, recorded with the negatives it gives
PASS_ONE = ("tokens.i32", "tf.u16", "distinct.i32", "length.i32")  # scratch files: per posting, then per passage
_SCRATCH = (*PASS_ONE, "doc_starts.i64", "idf.f64")


def build_bm25_index(
    store: PassageStore, out: str | os.PathLike[str], settings: BM25Settings = DEFAULT_BM25,
    chunk: int = _CHUNK, show_progress: bool = True, workers: int | None = None,
) -> dict:
    """Write a bm25s index of every passage into ``out`` (through ``<out>.tmp``); returns its size.

    ``settings`` are the scores' k1 and b, and what ``params.index.json`` records (bm25s reads them from there).

    ``workers`` processes tokenise and score (``None``: every core); the files do not depend on it.
    """
    workers = resolve_workers(workers)
    with atomic_folder(out) as tmp:
        n = len(store)
        word_to_id: dict[str, int] = {}
        df = np.zeros(0, dtype=np.int64)
        chunks = [(start, min(n, start + chunk)) for start in range(0, n, chunk)]
        with ExitStack() as stack:
            files = {name: stack.enter_context((tmp / name).open("wb")) for name in PASS_ONE}
            bar = stack.enter_context(tqdm(total=n, desc="BM25 tokenize", unit="passage", disable=not show_progress))
            tokenized = stack.enter_context(ordered_map(_tokenize_rows, PassageStore, (store.folder, store.template), workers))
            for (start, end), (words, token, tf, distinct, lengths) in zip(chunks, tokenized(chunks)):
                token = _renumber(word_to_id, words)[token]
                token.astype(np.int32).tofile(files["tokens.i32"])
                tf.tofile(files["tf.u16"])
                distinct.tofile(files["distinct.i32"])
                lengths.tofile(files["length.i32"])
                if len(df) < len(word_to_id):
                    df = np.concatenate([df, np.zeros(len(word_to_id) - len(df), dtype=np.int64)])
                df += np.bincount(token, minlength=len(df))
                bar.update(end - start)
        return finish_index(tmp, n, df, word_to_id, settings.k1, settings.b, chunk, show_progress, workers)


def finish_index(folder: Path, n: int, df: np.ndarray, word_to_id: dict[str, int], k1: float, b: float, chunk: int,
                 show_progress: bool, workers: int) -> dict:
    """Pass 2 and the index's metadata, once pass 1's scratch files (``PASS_ONE``) are in ``folder``; returns its size.

    ``benchmarks/bm25_scale.py`` writes those files from drawn token ids and builds through here.
    """
    _scatter_scores(folder, n, df, k1, b, chunk, show_progress, workers)
    _write_vocabulary(folder / "vocab.index.json", word_to_id)
    params = {"k1": k1, "b": b, "delta": 0.5, "method": "lucene", "idf_method": "lucene", "dtype": "float32",
              "int_dtype": "int32", "num_docs": n, "version": bm25s.__version__, "backend": "numpy"}
    atomic_write_text(folder / "params.index.json", json.dumps(params, indent=2))
    return {"passages": n, "vocabulary": len(word_to_id), "postings": int(df.sum()),
            "bytes": sum(p.stat().st_size for p in folder.iterdir())}


def _renumber(word_to_id: dict[str, int], words: list[str]) -> np.ndarray:
    """Global ids of a chunk's distinct words (in first-appearance order), numbering the unseen ones next.

    Dictionary work in C loops (a membership filter, ``update``, ``map``): this runs in the
    one process that owns the vocabulary while the workers tokenise, so it bounds the speed-up.
    """
    unseen = [word for word in words if word not in word_to_id]
    word_to_id.update(zip(unseen, range(len(word_to_id), len(word_to_id) + len(unseen))))
    return np.fromiter(map(word_to_id.__getitem__, words), dtype=np.int64, count=len(words))


def _write_vocabulary(path: Path, word_to_id: dict[str, int], block: int = 100_000) -> None:
    """``{"word":id,...}`` written a block of words at a time with the C JSON encoder.

    One ``json.dumps`` of millions of words would double the peak; one call per word made
    this serial tail a fifth of a two-worker build.
    """
    items = iter(word_to_id.items())
    with atomic_file(path) as handle:
        handle.write("{")
        for i, part in enumerate(iter(lambda: dict(islice(items, block)), {})):
            handle.write(("," if i else "") + json.dumps(part, ensure_ascii=False, separators=(",", ":"))[1:-1])
        handle.write("}")


def _tokenize_rows(store: PassageStore, rows: tuple[int, int]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk's words (in order of first appearance) and, per passage, its distinct word numbers and counts."""
    start, end = rows
    tokenizer = Tokenizer(stopwords=_STOPWORDS)
    docs = list(tokenizer.streaming_tokenize([store.passage_text(r) for r in range(start, end)], update_vocab=True))
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    flat = np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=int(lengths.sum()))
    vocab = len(tokenizer.word_to_id)
    keys = np.repeat(np.arange(len(docs), dtype=np.int64), lengths) * vocab + flat
    distinct_keys, tf = np.unique(keys, return_counts=True)
    doc, token = np.divmod(distinct_keys, vocab)
    return (list(tokenizer.word_to_id), token.astype(np.int32), np.minimum(tf, np.iinfo(np.uint16).max).astype(np.uint16),
            np.bincount(doc, minlength=len(docs)).astype(np.int32), lengths.astype(np.int32))


def _scatter_scores(folder: Path, n: int, df: np.ndarray, k1: float, b: float, chunk: int, show_progress: bool,
                    workers: int) -> None:
    """Second pass: BM25 weight of every (passage, token) written into token-major CSC arrays, a token range per task."""
    lengths = np.fromfile(folder / "length.i32", dtype=np.int32)
    average_length = float(lengths.mean()) if n else 0.0
    del lengths
    np.concatenate([[0], np.cumsum(np.fromfile(folder / "distinct.i32", dtype=np.int32), dtype=np.int64)]).tofile(folder / "doc_starts.i64")
    np.log1p((n - df + 0.5) / (df + 0.5)).tofile(folder / "idf.f64")
    indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
    np.save(folder / "indptr.csc.index.npy", indptr)
    nnz = int(indptr[-1])
    for name, dtype in (("data", np.float32), ("indices", np.int32)):
        np.lib.format.open_memmap(folder / f"{name}.csc.index.npy", mode="w+", dtype=dtype, shape=(nnz,)).flush()
    parts = max(1, min(len(df), workers))  # one range each: every range reads the whole scratch stream
    bounds = np.unique(np.searchsorted(indptr, np.linspace(0, nnz, parts + 1), side="left").clip(0, len(df)))
    bounds[0], bounds[-1] = 0, len(df)
    ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    with tqdm(total=nnz, desc="BM25 scores", unit="posting", disable=not show_progress) as bar, \
            ordered_map(_scatter_token_range, _ScatterInputs, (folder, n, chunk, k1, b, average_length), workers) as scattered:
        for postings in scattered(ranges):
            bar.update(postings)
    for scratch in _SCRATCH:
        (folder / scratch).unlink()


class _ScatterInputs:
    """What a scatter task maps: the scratch files of pass 1 and the CSC arrays it fills."""

    def __init__(self, folder: Path, n: int, chunk: int, k1: float, b: float, average_length: float) -> None:
        self.n, self.chunk, self.k1, self.b, self.average_length = n, chunk, k1, b, average_length
        self.indptr = np.load(folder / "indptr.csc.index.npy")
        nnz = int(self.indptr[-1])

        def scratch(name: str, dtype: type) -> np.ndarray:
            return np.memmap(folder / name, dtype=dtype, mode="r") if (folder / name).stat().st_size else np.zeros(0, dtype)

        self.tokens, self.tfs = scratch("tokens.i32", np.int32), scratch("tf.u16", np.uint16)
        self.distinct, self.lengths = scratch("distinct.i32", np.int32), scratch("length.i32", np.int32)
        self.doc_starts, self.idf = scratch("doc_starts.i64", np.int64), scratch("idf.f64", np.float64)
        self.data = np.load(folder / "data.csc.index.npy", mmap_mode="r+") if nnz else None
        self.indices = np.load(folder / "indices.csc.index.npy", mmap_mode="r+") if nnz else None


def _scatter_token_range(inputs: _ScatterInputs, token_range: tuple[int, int]) -> int:
    """Fill the CSC entries of tokens ``[lo, hi)``: within a token, passages in row order. Returns the postings written."""
    lo, hi = token_range
    total = int(inputs.indptr[hi] - inputs.indptr[lo])
    if total == 0:
        return 0
    cursor = inputs.indptr[lo:hi].copy()
    k1, b = inputs.k1, inputs.b
    for start in range(0, inputs.n, inputs.chunk):
        end = min(inputs.n, start + inputs.chunk)
        first, last = inputs.doc_starts[start], inputs.doc_starts[end]
        token = np.asarray(inputs.tokens[first:last], dtype=np.int64)
        doc = np.repeat(np.arange(start, end, dtype=np.int64), inputs.distinct[start:end])
        tf = np.asarray(inputs.tfs[first:last], dtype=np.float64)
        if lo > 0 or hi < len(inputs.idf):
            keep = np.flatnonzero((token >= lo) & (token < hi))
            token, doc, tf = token[keep], doc[keep], tf[keep]
        norm = k1 * ((1 - b) + b * inputs.lengths[doc] / inputs.average_length)
        score = (inputs.idf[token] * tf / (norm + tf)).astype(np.float32)
        order = np.argsort(token, kind="stable")
        token_sorted = token[order]
        unique, first_of, count = np.unique(token_sorted, return_index=True, return_counts=True)
        rank = np.arange(len(token_sorted)) - np.repeat(first_of, count)
        position = cursor[token_sorted - lo] + rank
        inputs.data[position] = score[order]
        inputs.indices[position] = doc[order]
        cursor[unique - lo] += count
    inputs.data.flush()
    inputs.indices.flush()
    return total


def load_bm25_index(folder: str | os.PathLike[str]) -> bm25s.BM25:
    """The index written by :func:`build_bm25_index`, memory-mapped."""
    return bm25s.BM25.load(str(folder), mmap=True)


def _load_scores(folder: str) -> bm25s.BM25:
    """The index's arrays without its vocabulary (a worker is handed token ids)."""
    return bm25s.BM25.load(folder, mmap=True, load_vocab=False)


def _query_ids(index: bm25s.BM25, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, words outside the index's vocabulary left out (as ``bm25s.BM25.retrieve`` does)."""
    tokens = bm25s.tokenize(list(texts), stopwords=_STOPWORDS, return_ids=False, show_progress=False)
    return [index.get_tokens_ids(words) for words in tokens]


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best-scoring rows among those with a non-zero score, best first, equal scores by row; -1 where fewer match.

    A passage sharing no word with the query scores exactly 0, and most of KILT's 36M do for any
    one query: ``np.argpartition`` over such a vector (bm25s's numpy selection) took 30–60 times
    as long as this selection among its non-zero rows (``benchmarks/bm25_selection.py``, 70–99.9%
    zeros: 0.4 s a query at 2M passages, so seconds at 36M). Zero-score rows were arbitrary fill,
    not hits: they are left out (-1, which :func:`multiret.data.negatives.drop_gold_pages` drops
    as it does FAISS's padding).
    """
    matched = np.count_nonzero(scores)
    rows = np.flatnonzero(scores) if 2 * matched < len(scores) else None  # mostly zeros: select among the others
    values = scores if rows is None else scores[rows]
    if matched > k:
        kth = np.partition(values, len(values) - k)[len(values) - k]  # the k-th largest score (not 0: more than k match)
        above, tied = np.flatnonzero(values > kth), np.flatnonzero(values == kth)
        keep = np.concatenate([above, tied[:k - len(above)]])  # of the rows scoring exactly the k-th, the first
    else:
        keep = np.flatnonzero(values)
    best = keep if rows is None else rows[keep]
    order = np.lexsort((best, -values[keep]))
    return np.concatenate([best[order], np.full(k - len(best), -1, dtype=np.int64)])


def _top_rows(index: bm25s.BM25, batch: tuple[list[list[int]], int]) -> np.ndarray:
    """Rows of the top-``k`` passages per query, best first: bm25s's scoring, then :func:`top_rows`, query by query."""
    queries, k = batch
    return np.array([top_rows(index.get_scores_from_ids(ids), k) for ids in queries], dtype=np.int64).reshape(len(queries), k)


def search(index: bm25s.BM25, texts: Sequence[str], k: int) -> np.ndarray:
    """Passage rows of the top-``k`` BM25 hits per text, best first, -1 after the last passage that matches (in this process)."""
    return _top_rows(index, (_query_ids(index, texts), k))


BACKENDS = ("auto", "numpy", "numba")  # how BM25Searcher scores: auto is numba where it is installed, else numpy


def resolve_backend(backend: str) -> str:
    """``auto`` → ``numba`` if numba is installed, else ``numpy``; an unknown or unavailable backend is a one-line error."""
    if backend not in BACKENDS:
        raise UserError(f"BM25 backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "numba" if bm25_numba.available() else "numpy"
    if backend == "numba" and not bm25_numba.available():
        raise UserError('BM25 backend numba: numba is not installed; pip install "multiret[bm25]" or use --bm25-backend numpy')
    return backend


class BM25Searcher:
    """:func:`search` on ``workers`` cores (``None``: every core); rankings depend on neither their number nor the backend.

    ``numpy`` scores in worker processes through bm25s (one float per passage per query);
    ``numba`` (:mod:`multiret.prepare.bm25_numba`) in threads of this process, from the query
    words' postings only: the same rows, several times faster (``benchmarks/bm25_scale.py``).
    """

    def __init__(self, folder: str | os.PathLike[str], workers: int | None = None, backend: str = "auto") -> None:
        self.index = load_bm25_index(folder)
        self.backend = resolve_backend(backend)
        self.workers = resolve_workers(workers)
        self._stack = ExitStack()
        if self.backend == "numpy":
            self._map = self._stack.enter_context(ordered_map(_top_rows, _load_scores, (str(folder),), self.workers))

    def search(self, texts: Sequence[str], k: int) -> np.ndarray:
        """Passage rows of the top-``k`` BM25 hits per text, best first."""
        ids = _query_ids(self.index, texts)
        if self.backend == "numba":
            scores = self.index.scores
            arrays = tuple(np.asarray(scores[name]) for name in ("data", "indices", "indptr"))
            return bm25_numba.search_ids(arrays, int(scores["num_docs"]), ids, k, self.workers)
        batches = [(ids[i:i + _SEARCH_BATCH], k) for i in range(0, len(ids), _SEARCH_BATCH)]
        return np.concatenate(list(self._map(batches))) if batches else np.zeros((0, k), dtype=np.int64)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> BM25Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

