"""Passages' token ids kept on disk: batches read back equal the collator's, and an encoding from them equals one that tokenises."""

import os

import lightning as L
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from multiret.data.collator import PromptCollator
from multiret.index.token_cache import TokenCache, tokenizer_key

TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18", "w3", "w4 w5 w6", "w7 w8", "w9", "w2 w2 w2 w2"]


def test_batches_read_back_equal_the_collators(tmp_path, tiny_t5_dir, tiny_bert_dir):
    """Rows written batch by batch (in any order) and read back in other batches: the collator's ids, mask, padding and dtype."""
    chunks, digests = [(10, 14), (14, 16)], ["a" * 32, "b" * 32]
    for directory in (tiny_t5_dir, tiny_bert_dir):
        collator = PromptCollator(AutoTokenizer.from_pretrained(directory), None, max_passage_length=16)
        writer = TokenCache(tmp_path, collator, chunks, digests)
        assert writer.batch([10, 11]) is None
        for rows in ([13, 10], [12, 11], [15, 14]):
            batch = collator.passages([TEXTS[r - 10] for r in rows])
            writer.record(np.array(rows), batch["input_ids"], batch["attention_mask"])
        writer.finish([0, 1])
        reader = TokenCache(tmp_path, collator, chunks, digests)
        assert reader.cached == {0, 1}
        for rows in ([11, 12, 10], [13], [14, 15]):
            expected = collator.passages([TEXTS[r - 10] for r in rows])
            batch = reader.batch(rows)
            for key in ("input_ids", "attention_mask"):
                assert batch[key].dtype == torch.long and torch.equal(batch[key], expected[key])
        with pytest.raises(ValueError, match="not all in one chunk"):
            reader.batch([13, 14])
    assert len({p.name for p in tmp_path.iterdir()}) == 2  # one folder per tokenizer
    assert not list(tmp_path.rglob(".*"))  # no file left under construction


def test_the_key_changes_with_the_length_limit_and_the_tokenizer(tiny_t5_dir, tiny_bert_dir):
    t5, bert = (AutoTokenizer.from_pretrained(d) for d in (tiny_t5_dir, tiny_bert_dir))
    keys = {tokenizer_key(PromptCollator(t5, None, 16)), tokenizer_key(PromptCollator(t5, None, 17)),
            tokenizer_key(PromptCollator(bert, None, 16))}
    assert len(keys) == 3
    t5("w1 w2 w3", max_length=3, truncation=True, padding="max_length")  # transformers sets truncation on the backend
    assert tokenizer_key(PromptCollator(t5, None, 16)) in keys


def index_in_process(model, corpus, collator, directory, **options):
    from multiret.index.dense import index_corpus
    from multiret.index.encoding_settings import EncodingSettings
    from multiret.index.sharded import ShardWriter

    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[ShardWriter()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    return index_corpus(trainer, model, corpus, collator, directory, EncodingSettings(batch_size=8, chunk_rows=16, **options))


def test_encoding_from_kept_tokens_never_tokenises_and_gives_the_same_vectors(tmp_path, kilt_dir, tiny_t5_dir, monkeypatch):
    """Three encodings: without the cache, filling it, from it (tokenizer forbidden): the same shard bit for bit.

    Then one passage's text changes: only its chunk is tokenised again.
    """
    from multiret.data.corpus import Corpus, read_corpus
    from multiret.index.shard_files import shard_paths
    from multiret.model.biencoder import BiEncoder
    from multiret.model.encoder import TextEncoder

    model = BiEncoder(TextEncoder(str(tiny_t5_dir), pooling="t5_decoder"), optimizer=None)
    corpus, collator = read_corpus(kilt_dir / "corpus.tsv"), PromptCollator(model.tokenizer, None, 16)
    tokens = tmp_path / "tokens"
    index_in_process(model, corpus, collator, tmp_path / "plain")
    index_in_process(model, corpus, collator, tmp_path / "filling", tokens_dir=tokens)
    assert len(list(tokens.rglob("*.npy"))) == len(corpus) // 16 and not list(tokens.rglob(".*"))
    umask = os.umask(0)
    os.umask(umask)
    assert {path.stat().st_mode & 0o777 for path in tokens.rglob("*.npy")} == {0o666 & ~umask}  # as open() makes them
    tokenised: list[int] = []
    real = collator.passages
    monkeypatch.setattr(collator, "passages", lambda texts: tokenised.append(len(texts)) or real(texts))
    index_in_process(model, corpus, collator, tmp_path / "kept", tokens_dir=tokens)
    assert tokenised == []
    shards = [np.load(shard_paths(tmp_path / name, 0, 1)[0]) for name in ("plain", "filling", "kept")]
    assert np.array_equal(shards[0], shards[1]) and np.array_equal(shards[0], shards[2])

    texts = list(corpus.texts)
    texts[20] = "w1 w2 w3"
    changed = Corpus(ids=list(corpus.ids), texts=texts, titles=list(corpus.titles), page_ids=list(corpus.page_ids))
    index_in_process(model, changed, collator, tmp_path / "changed", tokens_dir=tokens)
    assert sum(tokenised) == 16  # the chunk of rows 16-31
    assert len(list(tokens.rglob("*.npy"))) == len(corpus) // 16 + 1


def test_an_interrupted_encoding_keeps_the_finished_chunks_tokens_only(tmp_path, kilt_dir, tiny_t5_dir, monkeypatch):
    from multiret.data.corpus import read_corpus
    from multiret.model.biencoder import BiEncoder
    from multiret.model.encoder import TextEncoder

    model = BiEncoder(TextEncoder(str(tiny_t5_dir), pooling="t5_decoder"), optimizer=None)
    corpus, collator = read_corpus(kilt_dir / "corpus.tsv"), PromptCollator(model.tokenizer, None, 16)
    real, encoded = model.encode_passages, []

    def fail_in_chunk_2(ids, mask):
        if sum(encoded) == 40:  # chunks of 16 in batches of 8: chunks 0 and 1 written, chunk 2 half
            raise RuntimeError("interrupted")
        encoded.append(len(ids))
        return real(ids, mask)

    monkeypatch.setattr(model, "encode_passages", fail_in_chunk_2)
    with pytest.raises(RuntimeError, match="interrupted"):
        index_in_process(model, corpus, collator, tmp_path / "index", tokens_dir=tmp_path / "tokens")
    assert len(list((tmp_path / "tokens").rglob("*.npy"))) == 2 and not list((tmp_path / "tokens").rglob(".*"))
