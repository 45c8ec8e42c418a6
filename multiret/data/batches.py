"""The multitask training stream: every step holds a sub-batch of every task.

Step ``s`` is a pure function of ``(seed, s)``: each task walks its own sequence of seeded
epoch permutations (so small tasks are up-sampled by simply cycling sooner), and resuming
at step ``s`` yields exactly the batches an uninterrupted run would have seen. Under DDP
every process takes its contiguous slice of each task's global sub-batch, so W processes
see exactly the queries and passages one process would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset

from multiret.data.collator import PromptCollator
from multiret.data.corpus import Passages
from multiret.data.kilt import Query
from multiret.data.negatives import drop_gold_pages
from multiret.data.tasks import TaskSpec
from multiret.errors import UserError


class TaskBatch(NamedTuple):
    """One task's sub-batch: the model's unit of forward and backward, and the gradient method's unit of a task.

    ``query`` and ``passage`` are the collator's tensors (``input_ids``, ``attention_mask``);
    each query has ``1 + n_negatives`` passages, positive first. A micro-batch is a list of
    these, one per task in ``data.task_names`` order (:func:`check_tasks`); a step is a list of
    micro-batches. A NamedTuple, so Lightning moves the tensors to the device and leaves ``task``.
    """

    task: str
    query: dict[str, torch.Tensor]
    passage: dict[str, torch.Tensor]


def check_tasks(micro_batch: Sequence[TaskBatch], declared: Sequence[str]) -> None:
    """Fail unless the micro-batch holds exactly the declared tasks, in their order (``data.task_names``)."""
    tasks = [task_batch.task for task_batch in micro_batch]
    if tasks != list(declared):
        raise UserError(f"a training batch holds tasks {tasks}, but the data module declares data.task_names={list(declared)}; "
                        "the batches must come from the data module the trainer was given (its train_dataloader)")


@dataclass
class TaskStream:
    """One task's training queries, its per-step share of the batch, and its own corpus if it has one."""

    task: TaskSpec
    queries: list[Query]
    batch_size: int
    corpus: Passages | None = None  # None: the shared corpus of the batches


class MultitaskBatches(IterableDataset):
    """Yields, from optimizer step ``start_step`` on, forever, a list of ``micro_batches`` micro-batches per step
    (gradient accumulation), each a list of one :class:`TaskBatch` per stream, in the streams' order.

    Each query contributes ``1 + n_negatives`` passages, positive first, from its task's corpus
    (the stream's own, else ``corpus``), so in-batch negatives come from that corpus too: a positive
    drawn among its positives and negatives drawn from its pool, or, with ``first_positive`` and
    ``first_negatives``, its first positive and the first ``n_negatives`` of its pool (the TACO
    reference without shuffling).
    """

    def __init__(
        self,
        streams: Sequence[TaskStream],
        corpus: Passages | None,
        collator: PromptCollator,
        n_negatives: int,
        seed: int,
        start_step: int = 0,
        micro_batches: int = 1,
        rank: int = 0,
        world_size: int = 1,
        first_positive: bool = False,
        first_negatives: bool = False,
    ) -> None:
        super().__init__()
        self.first_positive = first_positive
        self.first_negatives = first_negatives
        self.streams = list(streams)
        self.corpus = corpus
        self.collator = collator
        self.n_negatives = n_negatives
        self.seed = seed
        self.start_step = start_step
        if micro_batches < 1:
            raise UserError(f"data.micro_batches must be ≥ 1, got {micro_batches}")
        self.micro_batches = micro_batches
        uneven = {s.task.name: s.batch_size for s in streams if s.batch_size % world_size}
        if uneven:
            raise UserError(
                f"per-task batch shares {uneven} do not split evenly over {world_size} processes; "
                "choose data.batch_size so that every task's share is a multiple of the number of processes"
            )
        self.rank = rank
        self.world_size = world_size
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def __iter__(self) -> Iterator[list[list[TaskBatch]]]:
        step = self.start_step
        while True:
            yield [self.batch(step * self.micro_batches + i) for i in range(self.micro_batches)]
            step += 1

    def batch(self, step: int) -> list[TaskBatch]:
        """Micro-batch number ``step`` (0-based) of the stream."""
        return [self._task_batch(t, s, step) for t, s in enumerate(self.streams)]

    def _permutation(self, task_index: int, epoch: int, size: int) -> np.ndarray:
        key = (task_index, epoch)
        if key not in self._permutations:
            self._permutations = {k: v for k, v in self._permutations.items() if k[0] != task_index}
            self._permutations[key] = np.random.default_rng([self.seed, task_index, epoch]).permutation(size)
        return self._permutations[key]

    def _task_batch(self, task_index: int, stream: TaskStream, step: int) -> TaskBatch:
        """This process's slice of the task's global sub-batch; each query's passages depend only on its position."""
        n = len(stream.queries)
        local = stream.batch_size // self.world_size
        first = step * stream.batch_size + self.rank * local
        corpus = stream.corpus if stream.corpus is not None else self.corpus
        assert corpus is not None, f"task {stream.task.name} has no corpus"
        queries: list[str] = []
        passages: list[str] = []
        for position in range(first, first + local):
            rng = np.random.default_rng([self.seed, task_index, position, 1])
            query = stream.queries[int(self._permutation(task_index, position // n, n)[position % n])]
            queries.append(query.text)
            positive = query.positives[0] if self.first_positive else int(rng.choice(query.positives))
            rows = [positive, *self._negatives(query, rng, corpus)]
            passages.extend(corpus.passage_text(r) for r in rows)
        return TaskBatch(stream.task.name, self.collator.queries(queries, stream.task), self.collator.passages(passages))

    def _negatives(self, query: Query, rng: np.random.Generator, corpus: Passages) -> list[int]:
        pool = query.negatives
        if len(pool) >= self.n_negatives and self.first_negatives:
            return pool[:self.n_negatives]
        if len(pool) >= self.n_negatives:
            return [pool[i] for i in sorted(rng.choice(len(pool), self.n_negatives, replace=False))]
        chosen = list(pool)
        while len(chosen) < self.n_negatives:
            chosen.extend(drop_gold_pages(corpus, query.gold_pages, [int(rng.integers(len(corpus)))]).tolist())
        return chosen
