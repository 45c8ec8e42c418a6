"""The prompt collator really puts each task's prompt tokens in front of its queries."""

import torch
from transformers import AutoTokenizer

from multiret.data.collator import PromptCollator
from multiret.data.tasks import TaskSpec

T5_TEMPLATE = "{prompt} <extra_id_1> {query}"


def test_t5_prompt_tokens_lead_the_query(tiny_t5_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    collator = PromptCollator(tokenizer, T5_TEMPLATE, max_passage_length=16)
    task = TaskSpec(name="qa", train=None, dev=None, prompt="QA", max_query_length=6)
    batch = collator.queries(["w1 w2", "w3 w4 w5 w6 w7 w8 w9"], task)
    ids = batch["input_ids"]
    qa, sentinel, eos = tokenizer.convert_tokens_to_ids(["QA", "<extra_id_1>", "</s>"])
    assert ids.shape == (2, 6)  # the task's max_query_length truncates, prefix included
    assert ids[:, 0].tolist() == [qa, qa]
    assert ids[:, 1].tolist() == [sentinel, sentinel]
    assert ids[0, 2:5].tolist() == tokenizer.convert_tokens_to_ids(["w1", "w2", "</s>"])
    assert ids[1, -1].item() == eos  # truncation keeps the end-of-sequence token
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]


def test_passages_get_no_prompt_and_no_template_means_plain_queries(tiny_t5_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    prompted = PromptCollator(tokenizer, T5_TEMPLATE, max_passage_length=16)
    plain = PromptCollator(tokenizer, None, max_passage_length=16)
    task = TaskSpec(name="qa", train=None, dev=None, prompt="QA", max_query_length=8)
    passage_ids = prompted.passages(["w1 w2"])["input_ids"][0].tolist()
    assert passage_ids == tokenizer.convert_tokens_to_ids(["w1", "w2", "</s>"])
    assert plain.queries(["w1 w2"], task)["input_ids"][0].tolist() == passage_ids


def test_text_prefix_for_encoder_only_models(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    collator = PromptCollator(tokenizer, "{prompt} {query}", max_passage_length=16)
    task = TaskSpec(name="el", train=None, dev=None, prompt="EL", max_query_length=8)
    ids = collator.queries(["w5"], task)["input_ids"][0].tolist()
    assert ids == tokenizer.convert_tokens_to_ids(["[CLS]", "EL", "w5", "[SEP]"])


def test_batches_equal_the_tokenizers_own_tensors(tiny_t5_dir, tiny_bert_dir):
    """The collator converts through NumPy (less time under the GIL); ids, mask, padding and dtype stay the tokenizer's."""
    texts = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18", "w3", "w4 w5 w6"]
    task = TaskSpec(name="qa", train=None, dev=None, prompt="QA", max_query_length=6)
    for directory in (tiny_t5_dir, tiny_bert_dir):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        collator = PromptCollator(tokenizer, "{prompt} {query}", max_passage_length=16)
        for batch, max_length, inputs in ((collator.passages(texts), 16, texts),
                                          (collator.queries(texts, task), 6, [f"QA {t}" for t in texts])):
            expected = tokenizer(inputs, max_length=max_length, truncation=True, padding=True, return_tensors="pt")
            for key in ("input_ids", "attention_mask"):
                assert batch[key].dtype == torch.long
                assert torch.equal(batch[key], expected[key])
