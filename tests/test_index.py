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


def test_corpus_encoded_in_chunks_equals_one_pass_and_leaves_no_partial_file(tmp_path, monkeypatch, kilt_dir, tiny_t5_dir):
    """index_corpus holds one chunk of texts at a time; the streamed embeddings.npy equals encoding everything at once."""
    from multiret.index import dense
    from multiret.data.collator import PromptCollator
    from multiret.data.corpus import read_corpus
    from multiret.index.encode import encode_texts
    from multiret.model.biencoder import BiEncoder
    from multiret.model.encoder import TextEncoder

    model = BiEncoder(TextEncoder(str(tiny_t5_dir), pooling="t5_decoder"), optimizer=None)
    corpus = read_corpus(kilt_dir / "corpus.tsv")
    collator = PromptCollator(model.tokenizer, None, 16)
    monkeypatch.setattr(dense, "ENCODE_CHUNK", 7)  # 80 passages: 12 chunks, the last one short
    index = dense.index_corpus(model, corpus, collator, tmp_path, show_progress=False)
    streamed = np.load(tmp_path / "embeddings.npy")
    whole = encode_texts([corpus.passage_text(r) for r in range(len(corpus))], collator.passages, model.encode_passages,
                         batch_size=64, show_progress=False)
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-6)
    assert index.ids == corpus.ids and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))  == []
    assert DenseIndex.load(tmp_path).search(whole[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
