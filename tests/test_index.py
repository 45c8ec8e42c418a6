"""Dense index: exact by default, factory strings, training samples, search parameters, atomic files."""

import faiss
import numpy as np
import pytest

from multiret.index.faiss_index import DenseIndex


def vectors(n=400, d=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_flat_index_is_exact_inner_product_search(tmp_path):
    data, queries = vectors(), vectors(5, seed=1)
    index = DenseIndex.build(data, [f"p{i}" for i in range(len(data))])
    scores, rows = index.search(queries, 3)
    expected = np.argsort(-(queries @ data.T), axis=1)[:, :3]
    assert rows.tolist() == expected.tolist()
    index.save(tmp_path, data, "Flat")
    again = DenseIndex.load(tmp_path)
    assert again.ids == index.ids and again.search(queries, 3)[1].tolist() == rows.tolist()
    assert np.array_equal(np.load(tmp_path / "embeddings.npy"), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.npy", "ids.txt", "index.faiss", "index.json"]


def test_ivf_with_every_list_probed_equals_exact_search():
    data, queries = vectors(), vectors(5, seed=1)
    exact = DenseIndex.build(data, [str(i) for i in range(len(data))])
    ivf = DenseIndex.build(data, [str(i) for i in range(len(data))], "IVF8,Flat", train_sample=200)
    ivf.set_search_parameters("nprobe=8")
    assert faiss.extract_index_ivf(ivf.index).nprobe == 8
    assert ivf.search(queries, 5)[1].tolist() == exact.search(queries, 5)[1].tolist()


def test_loading_a_folder_that_is_not_an_index_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a multiret index \(missing ids.txt, index.faiss, index.json\); run `multiret index` first"):
        DenseIndex.load(tmp_path)
