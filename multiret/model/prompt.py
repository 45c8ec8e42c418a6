"""How queries are prompted: the four ablation kinds and the learned soft prompt.

``none``: the query alone. ``text``: the task's prompt word before the query. ``sentinel``:
the prompt word and a T5 sentinel token, TACO's prompt (Zhang et al. 2023, §3.1). ``soft``:
``length`` trainable vectors per task placed before the query's input embeddings (prompt
tuning, Lester et al. 2021), trained with the model; passages never get a prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import PreTrainedTokenizerBase

from multiret.errors import UserError

PROMPT_KINDS = ("none", "text", "sentinel", "soft")
SOFT_INITS = ("prompt_word", "vocab")
SENTINEL = re.compile(r"<extra_id_\d+>")


@dataclass(frozen=True)
class QueryPrompt:
    """The ``prompt`` config (``conf/prompt/*.yaml``), checked once when the model is built.

    ``tasks`` (the trained tasks, in order) and ``task_specs`` (``data.tasks``, for the prompt
    words) are only read by the soft prompt: one row of vectors per task.
    """

    kind: str = "none"
    template: str | None = None
    length: int = 8
    init: str = "prompt_word"
    tasks: tuple[str, ...] = ()
    task_specs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> QueryPrompt:
        """Build from the config mapping (``None`` = no prompt), naming any unknown key."""
        if config is None:
            return cls()
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"prompt has unknown key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        values = dict(config)
        values["tasks"] = tuple(values.get("tasks") or ())
        values["task_specs"] = {name: dict(spec) for name, spec in (values.get("task_specs") or {}).items()}
        return cls(**values)

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise UserError(
                f"prompt.kind={self.kind!r} is unknown; choose one of {', '.join(PROMPT_KINDS)} (prompt=<kind>)"
            )
        if self.kind in ("none", "soft") and self.template is not None:
            raise UserError(f"prompt={self.kind} puts no text before the query; set prompt.template=null")
        if self.kind in ("text", "sentinel") and (self.template is None or "{query}" not in self.template):
            raise UserError(
                f"prompt={self.kind} needs a prompt.template containing '{{query}}', got {self.template!r}"
            )
        if self.kind == "sentinel" and not SENTINEL.search(self.template or ""):
            raise UserError(f"prompt=sentinel: prompt.template {self.template!r} has no <extra_id_N> sentinel token")
        if self.kind == "soft":
            if self.length < 1:
                raise UserError(f"prompt.length must be ≥ 1 vector per task, got {self.length}")
            if self.init not in SOFT_INITS:
                raise UserError(f"prompt.init={self.init!r}; choose one of {', '.join(SOFT_INITS)}")
            if not self.tasks:
                raise UserError(
                    "prompt=soft needs prompt.tasks (the trained tasks: ${data.task_names} in conf/prompt/soft.yaml)"
                )

    @property
    def is_soft(self) -> bool:
        return self.kind == "soft"

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
        """Refuse a sentinel prompt whose sentinel the tokenizer would split into ordinary pieces."""
        if self.kind != "sentinel":
            return
        vocabulary = tokenizer.get_vocab()
        missing = [token for token in SENTINEL.findall(self.template or "") if token not in vocabulary]
        if missing:
            raise UserError(
                f"prompt=sentinel needs the T5 sentinel token(s) {missing}, "
                f"which the tokenizer of {where} does not have; "
                "use prompt=text (or prompt=none, prompt=soft) with this model"
            )

    def prompt_word(self, task: str) -> str:
        word = self.task_specs.get(task, {}).get("prompt")
        if not word:
            raise UserError(
                f"prompt.init=prompt_word: task {task!r} has no prompt word (data.tasks.{task}.prompt); "
                "set one or use prompt.init=vocab"
            )
        return str(word)


class SoftPrompt(nn.Module):
    """``(tasks, length, dim)`` trainable vectors; a task's queries are prefixed with its row.

    Only the row of the task being encoded enters the graph, so a task's backward leaves every
    other task's rows with a zero gradient.
    """

    def __init__(self, tasks: Sequence[str], initial: torch.Tensor) -> None:
        super().__init__()
        if initial.dim() != 3 or initial.shape[0] != len(tasks):
            raise ValueError(
                f"soft prompt: expected ({len(tasks)}, length, dim) initial vectors, got {tuple(initial.shape)}"
            )
        self.tasks = list(tasks)
        self.row = {task: index for index, task in enumerate(self.tasks)}
        self.vectors = nn.Parameter(initial.detach().clone())

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Name the likely cause when a checkpoint's soft prompts do not fit: another task list or length."""
        saved = state_dict.get(prefix + "vectors")
        if saved is not None and saved.shape != self.vectors.shape:
            raise UserError(
                f"the checkpoint's soft prompts have shape {tuple(saved.shape)} (tasks, length, dim), but this model "
                f"has {tuple(self.vectors.shape)} for tasks {self.tasks}; use the training run's data.task_names "
                "(same order) and prompt.length"
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, task: str | None) -> torch.Tensor:
        """The ``(length, dim)`` vectors of ``task``."""
        if task is None:
            raise ValueError("prompt=soft: queries must be encoded with their task (encode_queries(..., task=name))")
        if task not in self.row:
            raise UserError(
                f"prompt=soft: task {task!r} has no soft prompt; the model was built for tasks {self.tasks} "
                "(soft prompts exist only for the tasks in data.task_names at training)"
            )
        return self.vectors[self.row[task]]


def build_soft_prompt(
    prompt: QueryPrompt, embeddings: nn.Embedding, tokenizer: PreTrainedTokenizerBase
) -> SoftPrompt:
    """Initial vectors: the task's prompt-word token embeddings repeated to ``length`` (``prompt_word``),
    or the embeddings of ``length`` random non-special vocabulary tokens per task (``vocab``, drawn
    from torch's seeded generator).

    Starting from the prompt word makes the soft prompt begin as (a repeated) text prompt, so the
    ablation measures what learning adds (Lester et al. 2021 compare both initialisations).
    """
    weight = embeddings.weight.detach()
    rows = []
    for task in prompt.tasks:
        if prompt.init == "prompt_word":
            ids = tokenizer(prompt.prompt_word(task), add_special_tokens=False)["input_ids"]
            if not ids:
                raise UserError(f"prompt.init=prompt_word: the prompt word of task {task!r} tokenizes to nothing")
            ids = [ids[i % len(ids)] for i in range(prompt.length)]
        else:
            special = set(tokenizer.all_special_ids)
            candidates = torch.tensor([i for i in range(min(len(tokenizer), weight.shape[0])) if i not in special])
            ids = candidates[torch.randint(len(candidates), (prompt.length,))].tolist()
        rows.append(weight[torch.tensor(ids)])
    return SoftPrompt(prompt.tasks, torch.stack(rows).float())
