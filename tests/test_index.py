"""Dense index: exact by default, factory strings, training samples, search parameters, atomic files, resumable encoding."""

import faiss
import lightning as L
import numpy as np
import pytest

from multiret.data.corpus import Corpus
from multiret.index.faiss_index import DenseIndex


def vectors(n=400, d=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def corpus_of(size, prefix="p"):
    ids = [f"{prefix}{i}" for i in range(size)]
    return Corpus(ids=ids, texts=ids, titles=ids, page_ids=[str(i // 2) for i in range(size)])


def test_flat_index_is_exact_inner_product_search(tmp_path):
    data, queries, corpus = vectors(), vectors(5, seed=1), corpus_of(400)
    index = DenseIndex.build(data, corpus.id_digest())
    scores, rows = index.search(queries, 3)
    expected = np.argsort(-(queries @ data.T), axis=1)[:, :3]
    assert rows.tolist() == expected.tolist()
    (tmp_path / "ids.txt").write_text("left by an older version\n")
    index.save(tmp_path, "Flat")
    again = DenseIndex.load(tmp_path, corpus)
    assert again.size == 400 and again.search(queries, 3)[1].tolist() == rows.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "index.json"]


def test_an_index_is_refused_for_another_corpus(tmp_path):
    DenseIndex.build(vectors(), corpus_of(400).id_digest()).save(tmp_path, "Flat")
    for other in (corpus_of(399), corpus_of(400, prefix="q")):
        with pytest.raises(ValueError, match="holds 400 passages of another corpus than the configured one"):
            DenseIndex.load(tmp_path, other)


def test_ivf_with_every_list_probed_equals_exact_search():
    data, queries = vectors(), vectors(5, seed=1)
    exact = DenseIndex.build(data, "corpus")
    ivf = DenseIndex.build(data, "corpus", "IVF8,Flat", train_sample=200)
    ivf.set_search_parameters("nprobe=8")
    assert faiss.extract_index_ivf(ivf.index).nprobe == 8
    assert ivf.search(queries, 5)[1].tolist() == exact.search(queries, 5)[1].tolist()


def test_loading_a_folder_that_is_not_an_index_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a multiret index \(missing index.faiss, index.json\); run `multiret index` first"):
        DenseIndex.load(tmp_path, corpus_of(3))


@pytest.fixture()
def tiny_encoder(kilt_dir, tiny_t5_dir):
    from multiret.data.collator import PromptCollator
    from multiret.data.corpus import read_corpus
    from multiret.model.biencoder import BiEncoder
    from multiret.model.encoder import TextEncoder

    model = BiEncoder(TextEncoder(str(tiny_t5_dir), pooling="t5_decoder"), optimizer=None)
    return model, read_corpus(kilt_dir / "corpus.tsv"), PromptCollator(model.tokenizer, None, 16)


def index_in_process(model, corpus, collator, directory, **options):
    from multiret.index.dense import index_corpus
    from multiret.index.encoding_settings import EncodingSettings
    from multiret.index.sharded import ShardWriter

    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[ShardWriter()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    return index_corpus(trainer, model, corpus, collator, directory, EncodingSettings(batch_size=8, **options))


def test_corpus_encoded_in_chunks_equals_one_pass_and_leaves_no_partial_file(tmp_path, tiny_encoder):
    """Chunks of 16 passages (80 in all: 5 chunks) give the embeddings of encoding every passage at once."""
    from multiret.index.encode import encode_texts
    from multiret.index.shard_files import shard_paths

    model, corpus, collator = tiny_encoder
    index = index_in_process(model, corpus, collator, tmp_path, chunk_rows=16)
    streamed = np.load(shard_paths(tmp_path, 0, 1)[0])
    whole = encode_texts([corpus.passage_text(r) for r in range(len(corpus))], collator.passages, model.encode_passages,
                         batch_size=64, show_progress=False)
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-6)
    assert index.size == len(corpus) and not [p.name for p in (tmp_path / "shards").iterdir() if p.name.startswith(".")]
    assert DenseIndex.load(tmp_path, corpus).search(whole[:3], 1)[1][:, 0].tolist() == [0, 1, 2]


def test_an_interrupted_one_process_index_encodes_only_the_missing_chunks(tmp_path, tiny_encoder, monkeypatch):
    from multiret.index.shard_files import shard_paths

    model, corpus, collator = tiny_encoder
    index_in_process(model, corpus, collator, tmp_path / "whole", chunk_rows=16)
    real = model.encode_passages
    encoded: list[int] = []

    def fail_at_chunk_3(input_ids, attention_mask):
        if sum(encoded) == 48:  # chunks of 16 passages in batches of 8: chunks 0-2 are written, chunk 3 not begun
            raise RuntimeError("interrupted")
        encoded.append(len(input_ids))
        return real(input_ids, attention_mask)

    monkeypatch.setattr(model, "encode_passages", lambda ids, mask: fail_at_chunk_3(ids, mask))
    with pytest.raises(RuntimeError, match="interrupted"):
        index_in_process(model, corpus, collator, tmp_path / "cut", chunk_rows=16)
    encoded.clear()
    monkeypatch.setattr(model, "encode_passages", lambda ids, mask: encoded.append(len(ids)) or real(ids, mask))
    index_in_process(model, corpus, collator, tmp_path / "cut", chunk_rows=16)
    assert sum(encoded) == len(corpus) - 48
    whole, resumed = (np.load(shard_paths(tmp_path / name, 0, 1)[0]) for name in ("whole", "cut"))
    assert np.array_equal(whole, resumed)


def test_tokenising_ahead_in_a_thread_gives_the_vectors_of_a_dataloader_worker(tmp_path, tiny_encoder):
    """num_workers=0 tokenises the next batches in a thread: same batches, so bit-identical embeddings."""
    from multiret.index.shard_files import shard_paths

    model, corpus, collator = tiny_encoder
    index_in_process(model, corpus, collator, tmp_path / "thread", chunk_rows=16)
    index_in_process(model, corpus, collator, tmp_path / "process", chunk_rows=16, num_workers=1)
    thread, process = (np.load(shard_paths(tmp_path / name, 0, 1)[0]) for name in ("thread", "process"))
    assert np.array_equal(thread, process)


def test_prefetching_collate_hands_back_the_batches_in_sampler_order_and_refuses_another_order():
    from multiret.index.shard_loading import PrefetchingCollate

    collate = PrefetchingCollate(lambda rows: {"rows": list(rows)}, [4, 2, 0, 1, 3], batch_size=2)
    assert [collate(rows)["rows"] for rows in ([4, 2], [0, 1], [3])] == [[4, 2], [0, 1], [3]]
    collate.close()
    other = PrefetchingCollate(lambda rows: {"rows": rows}, range(6), batch_size=2)
    with pytest.raises(RuntimeError, match=r"asked for rows \[2, 3\]... but the next batch tokenised ahead is \[0, 1\]"):
        other([2, 3])
    other.close()
