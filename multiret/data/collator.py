"""Tokenisation with task prompts: each task's query gets its prefix and its own maximum length."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from multiret.data.tasks import TaskSpec
from multiret.errors import UserError


class PromptCollator:
    """Turns query and passage texts into padded tensors.

    ``prompt_template`` formats a query from ``{prompt}`` (the task's prompt word) and
    ``{query}``. The paper's T5 prompt is ``"{prompt} <extra_id_1> {query}"``: the task name
    and a T5 sentinel before the query (TACO, Zhang et al. 2023, §3.1); ``None`` means no
    prompt. Passages never get a prompt. ``sep_to_eos`` writes the tokenizer's end-of-sequence
    token for every ``[SEP]`` in a query (KILT's T-REx and zsRE inputs), as the TACO reference
    does for T5 (its ``build_train.py``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_template: str | None,
        max_passage_length: int,
        sep_to_eos: bool = False,
    ) -> None:
        if sep_to_eos and not tokenizer.eos_token:
            raise UserError("data.query_sep_to_eos=true needs a tokenizer with an end-of-sequence token (T5 has </s>)")
        self.sep = tokenizer.eos_token if sep_to_eos else None
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.max_passage_length = max_passage_length

    def format_query(self, text: str, task: TaskSpec) -> str:
        if self.sep is not None:
            text = text.replace("[SEP]", self.sep)
        if self.prompt_template is None or task.prompt is None:
            return text
        return self.prompt_template.format(prompt=task.prompt, query=text)

    def queries(self, texts: Sequence[str], task: TaskSpec) -> dict:
        return self._encode([self.format_query(t, task) for t in texts], task.max_query_length)

    def passages(self, texts: Sequence[str]) -> dict:
        return self._encode(list(texts), self.max_passage_length)

    def _encode(self, texts: list[str], max_length: int) -> dict:
        # NumPy arrays, then tensors without a copy: ``return_tensors="pt"`` builds the tensors from
        # nested lists under the GIL, a third of the tokeniser's time, which a forward running in the
        # next thread (the corpus encoder tokenises ahead) waits for
        encoded = self.tokenizer(texts, max_length=max_length, truncation=True, padding=True, return_tensors="np")
        return {key: torch.as_tensor(encoded[key], dtype=torch.long) for key in ("input_ids", "attention_mask")}
