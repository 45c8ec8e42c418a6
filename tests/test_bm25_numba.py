"""The numba BM25 backend of `prepare kilt`'s negatives returns the numpy path's rows (skipped without numba)."""

from __future__ import annotations

import numpy as np
import pytest

from multiret.data.store import PassageStore
from multiret.errors import UserError
from multiret.prepare import bm25_index, bm25_numba
from multiret.prepare.bm25_index import BM25Searcher, build_bm25_index, load_bm25_index, resolve_backend, search
from multiret.prepare.passages import build_passage_store

WORDS = [f"w{i}" for i in range(12)]  # few words over many passages: many equal scores, ties at every cut
RARE = [f"r{i}" for i in range(150)]  # words of a passage or two: queries of these take the kernel's sparse path


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("bm25-numba")
    rng = np.random.default_rng(0)
    lines = ["id\ttext\ttitle\twikipedia_id"]
    for row in range(400):
        text = " ".join([*rng.choice(WORDS, size=int(rng.integers(1, 9))), *rng.choice(RARE, size=int(rng.integers(0, 2)))])
        lines.append(f"{row}_1\t{text}\tt{row % 7}\t{row}")
    (root / "passages.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    build_passage_store(root / "passages.tsv", root / "store", show_progress=False)
    build_bm25_index(PassageStore(root / "store"), root / "bm25", show_progress=False, workers=1)
    queries = [" ".join(rng.choice(words, size=int(rng.integers(1, 7))))
               for words in (WORDS + ["unknown"], RARE, RARE + WORDS) for _ in range(40)]
    return root / "bm25", [*queries, "unknown", "", "w3 w3 w3 t2", "r1 r1 r2"]


@pytest.mark.skipif(not bm25_numba.available(), reason="numba is not installed (the bm25 extra)")
@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("k", [1, 5, 500])
def test_numba_backend_returns_the_numpy_rows(index, workers, k):
    folder, queries = index
    expected = search(load_bm25_index(folder), queries, k)
    with BM25Searcher(folder, workers=workers, backend="numba") as searcher:
        assert np.array_equal(searcher.search(queries, k), expected)
    assert (expected == -1).any() and (expected[:, 0] >= 0).any()  # the fixture has both misses and hits
    index = load_bm25_index(folder)
    indptr, sparse = index.scores["indptr"], index.scores["num_docs"] // 32 + 1
    postings = [sum(int(indptr[t + 1] - indptr[t]) for t in ids) for ids in bm25_index._query_ids(index, queries)]
    assert min(postings) < sparse <= max(postings)  # both of the kernel's paths run


def test_backend_names_are_checked_and_auto_follows_numba(monkeypatch):
    assert resolve_backend("auto") == ("numba" if bm25_numba.available() else "numpy")
    assert resolve_backend("numpy") == "numpy"
    with pytest.raises(UserError, match="expected one of auto, numpy, numba"):
        resolve_backend("lucene")
    monkeypatch.setattr(bm25_index.bm25_numba, "available", lambda: False)
    assert resolve_backend("auto") == "numpy"
    with pytest.raises(UserError, match="numba is not installed"):
        resolve_backend("numba")
