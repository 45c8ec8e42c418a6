"""BM25 top-k rows of many queries, compiled with numba, on every core: the same rows as the numpy path, faster.

The numpy path (:func:`multiret.prepare.bm25_index.search`) has bm25s allocate and fill one
float per passage for each query (36M on KILT) in Python-driven NumPy, then selects among the
non-zero ones, in worker processes. Here each thread keeps one score buffer for all its
queries, adds the postings of each query word in the order bm25s does (so every float32 score
is bitwise bm25s's) and keeps the top ``k`` in a heap ordered by
:func:`multiret.prepare.bm25_index.top_rows`'s rule (best first, equal scores by row, -1 after
the last match), offering it only the rows the query touched when they are few, else scanning
the buffer in row order. The rows are the numpy path's (``tests/test_bm25_numba.py``); the
core time 3.3–5.6× less (docs/benchmarks.md). numba is an optional dependency (``pip install
"multiret[bm25]"``); :func:`available` says whether it is installed.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # the numpy path stays the fallback
    numba = None


def available() -> bool:
    """Whether numba is importable (the ``bm25`` extra)."""
    return numba is not None


def _worse(value: float, row: int, other_value: float, other_row: int) -> bool:
    """Whether (value, row) ranks below (other_value, other_row): a lower score, or the same score on a later row."""
    return value < other_value or (value == other_value and row > other_row)


def _offer(values: np.ndarray, rows: np.ndarray, size: int, value: float, row: int) -> int:
    """Keep the ``len(values)`` best offers in a heap whose root is the worst kept; returns the heap's new size."""
    if size == len(values):
        if not _worse_jit(values[0], rows[0], value, row):
            return size
        position = 0  # replace the root, then move the new entry down below any worse child
        while True:
            child = 2 * position + 1
            if child >= size:
                break
            if child + 1 < size and _worse_jit(values[child + 1], rows[child + 1], values[child], rows[child]):
                child += 1
            if not _worse_jit(values[child], rows[child], value, row):
                break
            values[position], rows[position] = values[child], rows[child]
            position = child
        values[position], rows[position] = value, row
        return size
    position = size  # append, then move up above any better parent
    while position > 0:
        parent = (position - 1) // 2
        if not _worse_jit(value, row, values[parent], rows[parent]):
            break
        values[position], rows[position] = values[parent], rows[parent]
        position = parent
    values[position], rows[position] = value, row
    return size + 1


def _ranked(values: np.ndarray, rows: np.ndarray, size: int, k: int) -> np.ndarray:
    """The heap's rows best first (equal scores by row), -1 after them up to ``k``."""
    by_row = np.argsort(rows[:size])
    order = by_row[np.argsort(-values[:size][by_row], kind="mergesort")]  # stable: equal scores stay in row order
    out = np.full(k, -1, dtype=np.int64)
    out[:size] = rows[:size][order]
    return out


def _score_queries(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, num_docs: int, flat: np.ndarray,
                   starts: np.ndarray, k: int, threads: int) -> np.ndarray:
    """Top-``k`` rows of each query (``flat[starts[q]:starts[q + 1]]`` its token ids); query q runs on thread q % threads.

    A query with fewer postings than a 32nd of the passages keeps a list of the rows it touches
    and offers only those to the heap (then zeroes them); any other query scans the whole
    buffer in row order, as bm25s does: a sequential read of every score beats scattered
    reads of more than a few percent of them. Both offer every matched row to the same heap,
    so they return the same rows.
    """
    n = len(starts) - 1
    out = np.empty((n, k), dtype=np.int64)
    sparse = num_docs // 32 + 1
    for thread in numba.prange(threads):
        scores = np.zeros(num_docs, dtype=data.dtype)
        touched = np.empty(sparse, dtype=np.int64)
        heap_values = np.empty(k, dtype=data.dtype)
        heap_rows = np.empty(k, dtype=np.int64)
        for q in range(thread, n, threads):
            words = flat[starts[q]:starts[q + 1]]
            postings = 0
            for t in words:
                postings += indptr[t + 1] - indptr[t]
            size = 0
            if postings < sparse:
                m = 0
                for t in words:
                    for j in range(indptr[t], indptr[t + 1]):
                        row = indices[j]
                        if scores[row] == 0:
                            touched[m] = row
                            m += 1
                        scores[row] += data[j]
                for i in range(m):
                    row = touched[i]
                    if size < k or _worse_jit(heap_values[0], heap_rows[0], scores[row], row):
                        size = _offer_jit(heap_values, heap_rows, size, scores[row], row)
                    scores[row] = 0
            else:
                for t in words:
                    for j in range(indptr[t], indptr[t + 1]):
                        scores[indices[j]] += data[j]
                for row in range(num_docs):  # rows rise: a score equal to the worst kept one never displaces it
                    value = scores[row]
                    if value > heap_values[0] if size == k else value != 0:  # a full heap holds non-zero scores only
                        size = _offer_jit(heap_values, heap_rows, size, value, row)
                scores[:] = 0
            out[q] = _ranked_jit(heap_values, heap_rows, size, k)
    return out


if numba is not None:
    _worse_jit = numba.njit(nogil=True, cache=True, inline="always")(_worse)
    _offer_jit = numba.njit(nogil=True, cache=True)(_offer)
    _ranked_jit = numba.njit(nogil=True, cache=True)(_ranked)
    _score_jit = numba.njit(parallel=True, nogil=True, cache=True)(_score_queries)


def search_ids(arrays: tuple[np.ndarray, np.ndarray, np.ndarray], num_docs: int, queries: list[list[int]], k: int,
               threads: int) -> np.ndarray:
    """Passage rows of the top-``k`` hits per query of token ids, best first, -1 after the last match, on ``threads`` threads."""
    if numba is None:
        raise ImportError('the numba BM25 backend needs numba: pip install "multiret[bm25]"')
    data, indices, indptr = arrays
    if not queries:
        return np.zeros((0, k), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum([len(q) for q in queries])]).astype(np.int64)
    flat = np.fromiter((t for q in queries for t in q), dtype=np.int64, count=int(starts[-1]))
    threads = max(1, min(threads, len(queries)))
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        return _score_jit(data, indices, indptr, num_docs, flat, starts, k, threads)
    finally:
        numba.set_num_threads(previous)
