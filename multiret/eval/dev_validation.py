"""Validation while training: every task's dev queries ranked against its candidate pool, scored, logged.

Training runs under manual optimisation over an endless batch stream, where Lightning's own
validation loop would need a second data path and never runs at step 0 or at ``max_steps``.
This callback scores at step 0 (the untrained model), every ``trainer.val_check_interval``
optimizer steps, and at the last step; it logs ``val/<task>/<metric>`` and
``val/average/<metric>`` to every logger under the global step, puts them in
``trainer.callback_metrics``, and then hands the end of validation to the ``ModelCheckpoint``
and ``EarlyStopping`` callbacks that monitor a ``val/`` key, as Lightning's validation loop does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from multiret.data.candidate_pool import CandidatePool, candidate_pool
from multiret.data.corpus import Passages
from multiret.data.datamodule import MultitaskDataModule
from multiret.data.kilt import Query
from multiret.data.tasks import TaskSpec
from multiret.errors import UserError
from multiret.eval.dev_metrics import PageRPrecision, metric_depth, retrieval_metrics
from multiret.eval.kilt_metrics import PAGE_KEY
from multiret.eval.retrieval import gold_records, with_average
from multiret.index.encode import encode_texts
from multiret.index.shard_files import contiguous_share

log = logging.getLogger(__name__)

PREFIX = "val"
SECONDS = "time/validation_seconds"  # logged beside the scores


class DevValidation(L.Callback):
    """Scores each task's dev split against a pool fixed for the run (:mod:`multiret.data.candidate_pool`).

    ``max_queries`` caps each task's dev queries (the data module's seeded sample, in order);
    ``pool_sample``, ``whole_corpus_max``, ``hard_negatives`` (per query, best first) and ``seed`` shape the pool; ``recall_ks`` the
    Recall@k columns; ``batch_size`` the encoding batches. Under DDP each process encodes its
    slice of the pool and of the queries, and the metrics sync as torchmetrics syncs them.
    """

    def __init__(self, max_queries: int | None = 50, pool_sample: int = 500, whole_corpus_max: int = 1000,
                 hard_negatives: int | None = 1, recall_ks: Sequence[int] = (5, 20), batch_size: int = 64,
                 seed: int = 13) -> None:
        self.max_queries = max_queries
        self.hard_negatives = hard_negatives
        self.pool_sample = pool_sample
        self.whole_corpus_max = whole_corpus_max
        self.recall_ks = list(recall_ks)
        self.batch_size = batch_size
        self.seed = seed
        self.datamodule: MultitaskDataModule | None = None
        self.queries: dict[str, list[Query]] = {}
        self.pools: dict[str, CandidatePool] = {}
        self.gold: dict[str, list[dict[str, Any]]] = {}
        self.record: dict[str, Any] = {}
        self.curve: list[tuple[int, dict[str, dict[str, float]]]] = []  # (step, results) of every validation of this process
        self._last_step: int | None = None

    def prepare(self, datamodule: MultitaskDataModule) -> dict[str, Any]:
        """Choose the queries and pools once; returns what the manifest records about them."""
        if self.datamodule is not None:
            return self.record
        split = datamodule.validation_split
        heldout = datamodule.heldout_queries(split)
        tasks = {}
        for task in datamodule.tasks:
            corpus = datamodule.corpus_of(task.name)
            queries = heldout[task.name][: self.max_queries]
            if not queries:
                raise UserError(f"task {task.name}: no {split} item has a gold page in the corpus, so "
                                "validation cannot score it; turn it off with callbacks.dev_validation=null")
            self.queries[task.name] = queries
            self.gold[task.name] = task_gold(datamodule, task, queries)
            self.pools[task.name] = candidate_pool(corpus, queries, self.pool_sample, self.whole_corpus_max, self.seed,
                                                   self.hard_negatives)
            tasks[task.name] = {"queries": len(queries), **self.pools[task.name].record(corpus)}
        self.datamodule = datamodule
        self.record = {"split": split, "seed": self.seed, "pool_sample": self.pool_sample,
                       "whole_corpus_max": self.whole_corpus_max, "hard_negatives": self.hard_negatives, "tasks": tasks}
        return self.record

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.prepare(trainer.datamodule)
        interval(trainer)  # a bad setting fails before the first step
        if trainer.global_step == 0:  # a resumed run logged its step-0 point before
            self.validate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % interval(trainer) == 0 or step >= trainer.max_steps:
            self.validate(trainer, pl_module)

    def validate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, dict[str, float]]:
        """Score, log, and let the checkpoint and early-stopping callbacks that watch ``val/`` act (once per step)."""
        step = trainer.global_step
        if step == self._last_step:
            return self.curve[-1][1]
        self._last_step = step
        started = time.perf_counter()
        results = with_average(self.score(pl_module, trainer.global_rank, trainer.world_size, trainer))
        self.curve.append((step, results))
        flat = {f"{PREFIX}/{task}/{name}": value for task, metrics in results.items() for name, value in metrics.items()}
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in flat.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:  # with its cost, so a run shows what validation adds to it
                logger.log_metrics({**flat, SECONDS: time.perf_counter() - started}, step=step)
            log.info("validation at step %d: %s", step, {k: round(v, 4) for k, v in results["average"].items()})
        for callback in trainer.callbacks:
            if isinstance(callback, (ModelCheckpoint, EarlyStopping)) and str(callback.monitor).startswith(f"{PREFIX}/"):
                callback.on_validation_end(trainer, pl_module)
        return results

    def score(self, model: Any, rank: int = 0, world_size: int = 1, trainer: L.Trainer | None = None) -> dict[str, dict[str, float]]:
        """Every task's metrics for ``model`` as it is now (the same on every process)."""
        assert self.datamodule is not None, "prepare() first"
        was_training = model.training
        model.eval()
        context = trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()  # training's precision
        try:
            with context:
                results = {}
                specs = {task.name: task for task in self.datamodule.tasks}
                for corpus, names in self.datamodule.corpus_groups(list(specs)):  # one shared corpus, or a task's own
                    rows = np.unique(np.concatenate([self.pools[name].rows for name in names]))
                    vectors = self._encode_passages(model, corpus, rows, rank, world_size)
                    results.update({name: self._score_task(model, specs[name], corpus, rows, vectors, rank, world_size)
                                    for name in names})
                return {name: results[name] for name in specs}
        finally:
            model.train(was_training)

    def _encode_passages(self, model: Any, corpus: Passages, rows: np.ndarray, rank: int, world_size: int) -> torch.Tensor:
        """The pool's passage vectors: each process encodes its contiguous slice, then all are gathered."""
        collator = self.datamodule.collator
        start, stop = contiguous_share(len(rows), world_size, rank)
        mine = encode_texts([corpus.passage_text(int(r)) for r in rows[start:stop]], collator.passages,
                            model.encode_passages, self.batch_size, model.device, show_progress=False)
        local = torch.from_numpy(mine).to(model.device)
        if world_size == 1:
            return local.cpu()
        sizes = [stop - start for start, stop in (contiguous_share(len(rows), world_size, r) for r in range(world_size))]
        padded = torch.zeros(max(sizes), local.shape[1], device=local.device, dtype=local.dtype)  # all_gather wants one shape
        padded[: len(local)] = local
        gathered = model.all_gather(padded).cpu()
        return torch.cat([gathered[r, :size] for r, size in enumerate(sizes)])

    def _score_task(self, model: Any, task: Any, corpus: Passages, rows: np.ndarray, vectors: torch.Tensor, rank: int,
                    world_size: int) -> dict[str, float]:
        collator = self.datamodule.collator
        pool_rows = self.pools[task.name].rows
        page_names, page_of_row = np.unique(np.asarray([corpus.page_ids[int(r)] for r in pool_rows]), return_inverse=True)
        start, stop = contiguous_share(len(self.queries[task.name]), world_size, rank)
        queries, gold = self.queries[task.name][start:stop], self.gold[task.name][start:stop]
        rprec, retrieval = PageRPrecision().to(model.device), retrieval_metrics(self.recall_ks).to(model.device)
        if queries:
            query_vectors = torch.from_numpy(encode_texts(
                [q.text for q in queries], lambda texts: collator.queries(texts, task),
                lambda ids, mask: model.encode_queries(ids, mask, task=task.name),
                self.batch_size, model.device, show_progress=False))
            scores = query_vectors @ vectors[torch.from_numpy(np.searchsorted(rows, pool_rows))].T
            page_scores = torch.full((len(queries), len(page_names)), -torch.inf).scatter_reduce(
                1, torch.from_numpy(page_of_row).expand(len(queries), -1), scores, "amax")
            depth = max(metric_depth(self.recall_ks), *(len(q.gold_pages) for q in queries))
            top = page_scores.topk(min(depth, len(page_names)), dim=1).indices.tolist()
            ranked = [[str(page_names[j]) for j in row] for row in top]
            rprec.update(ranked, gold)
            preds, target, indexes = candidates(queries, ranked, page_scores, page_names, start)
            retrieval.update(preds.to(model.device), target.to(model.device), indexes=indexes.to(model.device))
        return {"Rprec": float(rprec.compute()), **{k: float(v) for k, v in retrieval.compute().items()}}


def task_gold(datamodule: MultitaskDataModule, task: TaskSpec, queries: Sequence[Query]) -> list[dict[str, Any]]:
    """Each query's gold record: KILT's from the task's split file, or, for a task judged by qrels (BEIR), one output
    whose provenance is its relevant documents (each document its own page), so R-precision is the usual binary one."""
    if task.name in datamodule.qrels:
        return [{"id": q.qid, "output": [{"provenance": [{PAGE_KEY: page} for page in q.gold_pages]}]} for q in queries]
    records = gold_records(task, datamodule.validation_split, [q.qid for q in queries], datamodule.corpus_of(task.name))
    by_id = {str(r["id"]).strip(): r for r in records}
    return [by_id[q.qid] for q in queries]


def candidates(queries: Sequence[Query], ranked: Sequence[Sequence[str]], page_scores: torch.Tensor,
               page_names: np.ndarray, first_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(preds, target, indexes)`` for torchmetrics: each query's top pages plus its gold pages (absent ones scored lowest).

    Every metric looks at most ``metric_depth`` pages deep, and with the gold pages added every
    relevant page counts in the denominators, so this equals scoring every page of the pool.
    """
    column = {str(name): j for j, name in enumerate(page_names)}
    lowest = torch.finfo(page_scores.dtype).min
    preds: list[float] = []
    target: list[bool] = []
    indexes: list[int] = []
    for i, (query, pages) in enumerate(zip(queries, ranked)):
        gold = set(query.gold_pages)
        shown = list(dict.fromkeys([*pages, *query.gold_pages]))
        preds += [float(page_scores[i, column[p]]) if p in column else lowest for p in shown]
        target += [p in gold for p in shown]
        indexes += [first_index + i] * len(shown)
    return torch.tensor(preds), torch.tensor(target), torch.tensor(indexes)


def interval(trainer: L.Trainer) -> int:
    """``trainer.val_check_interval`` as a whole number of optimizer steps."""
    return check_interval(trainer.val_check_interval)


def check_interval(value: Any) -> int:
    """A validation interval, refused unless a whole number of steps >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"trainer.val_check_interval={value!r}: validation runs every N optimizer steps, so give a whole "
                        "number N >= 1 (e.g. trainer.val_check_interval=50)")
    return value

