"""Task specifications: where a task's KILT files are and how its queries are prompted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from multiret.errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """One retrieval task: its KILT-format splits, prompt word and maximum query length."""

    name: str
    train: str | None
    dev: str | None
    test: str | None = None
    val: str | None = None
    prompt: str | None = None
    max_query_length: int = 32

    def split_path(self, split: str) -> str:
        path = {"train": self.train, "dev": self.dev, "test": self.test, "val": self.val}.get(split)
        if path is None:
            raise UserError(f"task {self.name!r} has no {split!r} file configured (data.tasks.{self.name}.{split})")
        return path


def select_tasks(known: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> list[TaskSpec]:
    """Build the specs of the named tasks, failing with the list of known task names."""
    if not names:
        raise UserError("data.task_names is empty; name at least one task")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(
            f"unknown task(s) {', '.join(map(repr, unknown))} in data.task_names; "
            f"known tasks: {', '.join(sorted(known))}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"data.task_names lists a task twice: {list(names)}")
    return [TaskSpec(name=name, **dict(known[name])) for name in names]
