"""Model stage: pooling as specified, the contrastive loss by hand, clear errors on bad model paths."""

import pytest
import torch
from torch import nn
from transformers import AutoModel

from multiret.data.batches import TaskBatch
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
