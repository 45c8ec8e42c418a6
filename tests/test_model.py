"""Model stage: pooling as specified, the contrastive loss by hand, clear errors on bad model paths."""

import os

import pytest
import torch
from torch import nn
from transformers import AutoModel

from multiret.data.batches import TaskBatch
from multiret.errors import UserError
from multiret.model.biencoder import BiEncoder
from multiret.model.encoder import TextEncoder


def test_missing_model_path_says_which_path_and_how_to_provide_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model path '.*nowhere' is not a model folder.*model.encoder.path="):
        TextEncoder(str(tmp_path / "nowhere"))


def test_missing_model_package_says_how_to_install_it():
    with pytest.raises(FileNotFoundError, match=r"pip install no-such-model-package"):
        TextEncoder("pypi:no-such-model-package")


def test_t5_pooling_is_the_first_decoder_output_with_start_id_zero(tiny_t5_dir):
    encoder = TextEncoder(str(tiny_t5_dir), pooling="t5_decoder")
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    mask = (ids != 0).long()
    reference = AutoModel.from_pretrained(tiny_t5_dir)
    expected = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.zeros(2, 1, dtype=torch.long))
    torch.testing.assert_close(encoder(ids, mask), expected.last_hidden_state[:, 0])


def test_num_layers_keeps_the_first_pre_trained_layers(tiny_bert_dir):
    full = TextEncoder(str(tiny_bert_dir))
    fewer = TextEncoder(str(tiny_bert_dir), num_layers=1)
    assert len(full.model.encoder.layer) > 1 and len(fewer.model.encoder.layer) == 1
    torch.testing.assert_close(fewer.model.encoder.layer[0].state_dict(), full.model.encoder.layer[0].state_dict())
    with pytest.raises(UserError, match=r"model.encoder.num_layers=0 must be a positive number"):
        TextEncoder(str(tiny_bert_dir), num_layers=0)


def test_mean_and_first_pooling_of_an_encoder_only_model(tiny_bert_dir):
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    mask = (ids != 0).long()
    hidden = AutoModel.from_pretrained(tiny_bert_dir).eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    mean = TextEncoder(str(tiny_bert_dir), pooling="mean").eval()(ids, mask)
    torch.testing.assert_close(mean[1], hidden[1, :3].mean(0))
    first = TextEncoder(str(tiny_bert_dir), pooling="first", normalize=True).eval()(ids, mask)
    torch.testing.assert_close(first, nn.functional.normalize(hidden[:, 0], dim=-1))


def test_pooling_that_does_not_fit_the_model_is_refused(tiny_bert_dir):
    with pytest.raises(ValueError, match="use 't5_decoder' for encoder-decoder models"):
        TextEncoder(str(tiny_bert_dir), pooling="t5_decoder")


def test_loss_is_cross_entropy_over_in_batch_and_hard_negatives(tiny_bert_dir):
    model = BiEncoder(TextEncoder(str(tiny_bert_dir), pooling="mean"), optimizer=torch.optim.AdamW, temperature=0.5)
    model.eval()
    queries = {"input_ids": torch.tensor([[2, 5, 3], [2, 6, 3]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    passages = {"input_ids": torch.tensor([[2, 7, 3], [2, 8, 3], [2, 9, 3], [2, 10, 3]]),
                "attention_mask": torch.ones(4, 3, dtype=torch.long)}
    q = model.encode_queries(**queries)
    p = model.encode_passages(**passages)
    scores = q @ p.T / 0.5
    # query 0's positive is passage 0, query 1's is passage 2 (each query: positive, then one negative)
    expected = -(torch.log_softmax(scores[0], 0)[0] + torch.log_softmax(scores[1], 0)[2]) / 2
    torch.testing.assert_close(model.task_loss(TaskBatch("qa", queries, passages)), expected)


def test_untied_encoders_are_separate_copies(tiny_bert_dir):
    model = BiEncoder(TextEncoder(str(tiny_bert_dir)), optimizer=torch.optim.AdamW, shared_encoder=False)
    assert model.query_encoder is not model.passage_encoder
    shared = BiEncoder(TextEncoder(str(tiny_bert_dir)), optimizer=torch.optim.AdamW)
    assert sum(p.numel() for p in model.parameters()) == 2 * sum(p.numel() for p in shared.parameters())


def test_constructing_an_encoder_leaves_the_environment_alone(tiny_bert_dir, monkeypatch):
    """HF_HUB_OFFLINE is the entry points' to set (`multiret`, `multiret.Retriever`), not a side effect of a model."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    TextEncoder(str(tiny_bert_dir), pooling="mean")
    assert "HF_HUB_OFFLINE" not in os.environ


def test_the_entry_points_keep_the_hub_offline(monkeypatch, capsys):
    import multiret
    from multiret.cli import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    main(["no-such-command"])
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert multiret.Retriever and os.environ["HF_HUB_OFFLINE"] == "1"
