"""The data module over BEIR- and MS MARCO-layout datasets: every dataset a task with its own corpus."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from multiret.data.beir import DatasetFiles, read_dataset_corpus, read_split
from multiret.data.corpus import subsample_pages
from multiret.data.datamodule import MultitaskDataModule
from multiret.data.kilt import attach_positives
from multiret.errors import UserError

TASK_SETTINGS = ("prompt", "max_query_length")  # what data.tasks.<dataset> may set


class BeirDataModule(MultitaskDataModule):
    """Each named dataset (``<root>/<name>/``, layouts in :mod:`multiret.data.beir`) is a task searched in its own
    corpus; training reads its ``train`` judgements, evaluation its ``eval_split`` ones (scored with IR measures).

    ``tasks`` optionally sets a dataset's ``prompt`` word (default: its name) and ``max_query_length``
    (default: ``max_query_length``). Each corpus is read through a memory-mapped store kept in
    ``store_dir`` (default: inside the dataset's folder), built on the first load. Every other setting
    is :class:`MultitaskDataModule`'s.
    """

    def __init__(self, root: str, task_names: Sequence[str], tasks: Mapping[str, Mapping[str, Any]] | None = None,
                 max_query_length: int = 64, corpus: str | None = None, store_dir: str | None = None, **settings: Any) -> None:
        tasks = dict(tasks or {})
        for name, spec in tasks.items():
            extra = sorted(set(spec) - set(TASK_SETTINGS))
            if extra:
                raise UserError(f"data.tasks.{name} sets {extra}; a BEIR dataset's files are found by its folder "
                                f"<data.root>/{name}, only {list(TASK_SETTINGS)} can be set")
        specs = {name: {"train": name, "dev": name, "test": name, "prompt": name, "max_query_length": max_query_length,
                        **tasks.get(name, {})} for name in task_names}
        super().__init__(root=root, corpus=corpus or ".", tasks=specs, task_names=task_names, **settings)
        self.store_dir = store_dir

    def data_files(self) -> list[Path]:
        """Each dataset's corpus, queries and judgements of the eval split, and of ``train`` where it has them."""
        files: list[Path] = []
        for task in self.tasks:
            folder = self.root / task.name
            for split in ("train", self.eval_split):
                found = DatasetFiles.of(folder, split)
                if split == "train" and not found.qrels.is_file():
                    continue  # evaluation alone needs no training judgements; training says which task lacks them
                files.extend(path for path in (found.corpus, found.queries, found.qrels) if path not in files)
        return files

    def _load(self) -> None:
        self.prepare_data()
        corpora, train, evaluation = {}, {}, {}
        for task in self.tasks:
            folder = self.root / task.name
            corpus = read_dataset_corpus(folder, self.passage_template, self.store_dir)
            if DatasetFiles.of(folder, "train").qrels.is_file():
                train[task.name], _ = read_split(folder, "train", corpus, self.max_train_queries, self.seed)
            else:
                train[task.name] = []
            evaluation[task.name], self.qrels[task.name] = read_split(
                folder, self.eval_split, corpus, self.max_eval_queries, self.seed)
            gold = {p for qs in (train[task.name], evaluation[task.name]) for q in qs for p in q.gold_pages}
            corpora[task.name] = subsample_pages(corpus, gold, self.corpus_max_pages, self.seed)
        self.task_corpora = corpora
        self.train_queries = {name: attach_positives(name, qs, corpora[name], name in self.all_passages_positive)
                              for name, qs in train.items()}
        self.eval_queries = evaluation

    def _prepare_training(self) -> None:
        lacking = [str(DatasetFiles.of(self.root / name, "train").qrels) for name, qs in self.train_queries.items() if not qs]
        if lacking:
            raise UserError(f"no usable training judgement in {', '.join(lacking)} (missing, or no document graded > 0); "
                            "train on datasets that have train judgements, or evaluate only (stages=[index,evaluate])")
        super()._prepare_training()
