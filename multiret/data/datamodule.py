"""The multitask LightningDataModule: tasks, corpus, positives, negative pools, mixed batches.

It only reads: files a prepare step wrote, and what the injected ``builder`` and ``negatives_miner``
(preparation steps of :mod:`multiret.prepare`, named by the data config) produce.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from multiret.data.batches import MultitaskBatches, TaskStream
from multiret.data.beir import Qrels
from multiret.data.collator import PromptCollator
from multiret.data.corpus import Passages, read_corpus, subsample_pages
from multiret.data.kilt import Query, attach_positives, read_queries
from multiret.data.mixing import task_batch_sizes
from multiret.data.negatives import negatives_file, read_negatives, read_positives
from multiret.data.passage_files import AUTO
from multiret.data.prepared import check_prepared
from multiret.data.tasks import TaskSpec, select_tasks
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE, check_template
from multiret.errors import UserError

log = logging.getLogger(__name__)

NegativesMiner = Callable[[Passages, Mapping[str, list[Query]], int], None]  # corpus, queries by task, depth → sets query.negatives


class MultitaskDataModule(L.LightningDataModule):
    """Loads the configured tasks over one shared corpus (or each over its own) and streams multitask batches.

    ``builder`` (optional) is called with ``root`` before anything is read, so an embedded
    benchmark such as ``vital`` is built on first use and reused afterwards. ``negatives_miner``
    (optional) fills the negative pools, ``bm25_top_k`` deep, of queries that ``negatives_dir``
    has no file for, e.g. :func:`multiret.prepare.negatives.bm25_negatives`. ``positives_dir``
    (optional) holds given positives per query (``multiret prepare dpr``) used instead of the
    gold pages' passages; ``positive_rule`` and ``negative_rule`` (``sample`` or ``first``) say
    how a batch takes them (:class:`MultitaskBatches`); ``query_sep_to_eos`` see
    :class:`PromptCollator`.

    A subclass whose tasks each bring their own corpus (:class:`multiret.data.beir_datamodule.BeirDataModule`)
    fills ``task_corpora``: such a task is searched in, and draws its positives and negatives from, its
    corpus (:meth:`corpus_of`); ``qrels`` holds the graded judgements its eval split is scored by.
    """

    RULES = ("sample", "first")

    def __init__(
        self,
        root: str,
        corpus: str,
        tasks: Mapping[str, Mapping[str, Any]],
        task_names: Sequence[str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        prompt_template: str | None = None,
        batch_size: int = 24,
        micro_batches: int = 1,
        mix_temperature: float = 4.0,
        n_negatives: int = 2,
        bm25_top_k: int = 30,
        max_passage_length: int = 160,
        max_train_queries: int | None = None,
        max_eval_queries: int | None = None,
        eval_split: str = "dev",
        validation_split: str | None = None,
        corpus_max_pages: int | None = None,
        all_passages_positive: Sequence[str] = (),
        builder: Callable[[Path], Any] | None = None,
        negatives_dir: str | None = None,
        negatives_miner: NegativesMiner | None = None,
        step_offset: int = 0,
        seed: int = 13,
        passage_layout: str = AUTO,
        passage_template: str | None = DEFAULT_PASSAGE_TEMPLATE,
        positives_dir: str | None = None,
        positive_rule: str = "sample",
        negative_rule: str = "sample",
        query_sep_to_eos: bool = False,
    ) -> None:
        super().__init__()
        for key, rule in (("positive_rule", positive_rule), ("negative_rule", negative_rule)):
            if rule not in self.RULES:
                raise UserError(f"data.{key}={rule!r}: expected one of {', '.join(self.RULES)}")
        self.positives_dir = positives_dir
        self.first_positive, self.first_negatives = positive_rule == "first", negative_rule == "first"
        self.root = Path(root)
        self.corpus_path = self.root / corpus
        specs = {name: {k: (str(self.root / v) if k in ("train", "dev", "test") and v else v) for k, v in spec.items()}
                 for name, spec in tasks.items()}
        self.tasks: list[TaskSpec] = select_tasks(specs, list(task_names))
        # a sub-corpus keeps the gold pages of every offered task's sampled queries (see _other_tasks_gold_pages)
        self.other_tasks = [TaskSpec(name=name, **spec) for name, spec in specs.items() if name not in task_names]
        self.passage_layout = passage_layout
        self.passage_template = check_template(passage_template)
        check_prepared(self.root, task_names, self.passage_template)
        self.collator = PromptCollator(tokenizer, prompt_template, max_passage_length, query_sep_to_eos) if tokenizer else None
        self.batch_size = batch_size
        self.micro_batches = micro_batches
        self.mix_temperature = mix_temperature
        self.n_negatives = n_negatives
        self.bm25_top_k = bm25_top_k
        self.max_train_queries = max_train_queries
        self.max_eval_queries = max_eval_queries
        self.eval_split = eval_split
        self.validation_split = validation_split or eval_split  # what validation while training scores
        self.corpus_max_pages = corpus_max_pages
        self.all_passages_positive = set(all_passages_positive)
        self.builder = builder
        self.negatives_dir = negatives_dir
        self.negatives_miner = negatives_miner
        self.step_offset = step_offset
        self.seed = seed
        self.corpus: Passages | None = None
        self.task_corpora: dict[str, Passages] = {}  # a task's own corpus where it has one; else it uses self.corpus
        self.qrels: dict[str, Qrels] = {}  # the eval split's graded judgements of tasks scored with IR measures
        self.train_queries: dict[str, list[Query]] = {}
        self.eval_queries: dict[str, list[Query]] = {}
        self.validation_queries: dict[str, list[Query]] = {}  # the validation split's (eval_queries when it is the same)
        self.task_batch_sizes: dict[str, int] = {}

    @property
    def task_names(self) -> list[str]:
        """The trained tasks in ``data.task_names`` order: the one task list the model's batches and the gradient method follow."""
        return [task.name for task in self.tasks]

    def data_files(self) -> list[Path]:
        """Every file this module reads (corpus, or a prepared store's files, and the configured splits), for the run's manifest."""
        corpus = sorted(self.corpus_path.iterdir()) if self.corpus_path.is_dir() else [self.corpus_path]
        others = [path for path, _ in self._other_task_files()]
        return [*corpus, *(Path(t.split_path(s)) for t in self.tasks for s in self._splits()), *others]

    def _splits(self) -> list[str]:
        """The splits read: train, the eval split and, if it differs, the validation split."""
        return list(dict.fromkeys(("train", self.eval_split, self.validation_split)))

    def prepare_data(self) -> None:
        if self.builder is not None:
            self.builder(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Read everything once; mine BM25 negatives only when fitting."""
        if self.corpus is None and not self.task_corpora:
            self._load()
        if stage == "fit" and not self.task_batch_sizes:
            self._prepare_training()

    def _load(self) -> None:
        self.prepare_data()
        corpus = read_corpus(self.corpus_path, self.passage_layout, self.passage_template)
        key = corpus.page_key
        train = {t.name: read_queries(t.split_path("train"), self.max_train_queries, self.seed, key) for t in self.tasks}
        evaluation = self._read_heldout(self.eval_split, key)
        validation = evaluation if self.validation_split == self.eval_split else self._read_heldout(self.validation_split, key)
        gold = {p for qs in (*train.values(), *evaluation.values(), *validation.values()) for q in qs for p in q.gold_pages}
        gold |= self._other_tasks_gold_pages(key)
        self.corpus = subsample_pages(corpus, gold, self.corpus_max_pages, self.seed)
        self.train_queries = {name: self._positives(name, qs, "train") for name, qs in train.items()}
        self.eval_queries = evaluation
        self.validation_queries = validation

    def _read_heldout(self, split: str, page_key: str) -> dict[str, list[Query]]:
        """Each task's queries of a held-out split (a seeded sample of ``max_eval_queries``); an empty file is refused."""
        queries = {t.name: read_queries(t.split_path(split), self.max_eval_queries, self.seed, page_key) for t in self.tasks}
        empty = [t.split_path(split) for t in self.tasks if not queries[t.name]]
        if empty:
            raise UserError(f"no item in the {split} file(s) {', '.join(map(str, empty))} (empty or blank): "
                            "every score would be 0; fill them, or choose data.eval_split, data.validation_split or data.task_names")
        return queries

    def corpus_of(self, task: str) -> Passages:
        """The corpus a task is searched in and draws its passages from: its own, else the shared one."""
        corpus = self.task_corpora.get(task, self.corpus)
        if corpus is None:
            raise RuntimeError("the data module is not set up: call setup() first")
        return corpus

    def corpus_groups(self, tasks: Sequence[str]) -> list[tuple[Passages, list[str]]]:
        """The tasks grouped by the corpus they search, in order: one group over a shared corpus, one per task's own."""
        groups: dict[int, tuple[Passages, list[str]]] = {}
        for task in tasks:
            corpus = self.corpus_of(task)
            groups.setdefault(id(corpus), (corpus, []))[1].append(task)
        return list(groups.values())

    def _positives(self, task: str, queries: list[Query], split: str) -> list[Query]:
        """The queries with positives: the given ones when ``positives_dir`` has the split's file (always needed for
        training), else the gold pages' passages."""
        if self.positives_dir is not None and (split == "train" or negatives_file(self.positives_dir, task, split).is_file()):
            return read_positives(self.positives_dir, task, queries, self.corpus_of(task), split)
        return attach_positives(task, queries, self.corpus_of(task), task in self.all_passages_positive)

    def _other_tasks_gold_pages(self, page_key: str) -> set[str]:
        """Gold pages of the queries the offered but unselected tasks would sample with this seed (from their files that exist).

        A sub-corpus keeps them so that a model trained on some tasks (one per task, say) searches
        the very pages a multitask model of the same seed does: the pages a task's queries come
        from (vital-el's contexts are other articles) would otherwise be missing, and a
        task-specific dev score would be measured on an easier corpus.
        """
        return {p for path, limit in self._other_task_files() for q in read_queries(path, limit, self.seed, page_key)
                for p in q.gold_pages}

    def _other_task_files(self) -> list[tuple[Path, int | None]]:
        """The unselected tasks' train and eval-split files that exist, with their sampling caps; none without a sub-corpus."""
        if self.corpus_max_pages is None:
            return []
        splits = [(split, self.max_train_queries if split == "train" else self.max_eval_queries) for split in self._splits()]
        candidates = [(getattr(task, split), limit) for task in self.other_tasks for split, limit in splits]
        return [(Path(path), limit) for path, limit in candidates if path is not None and Path(path).is_file()]

    def _prepare_training(self) -> None:
        empty = [name for name, qs in self.train_queries.items() if not qs]
        if empty:
            files = ", ".join(f"{t.train}" for t in self.tasks if t.name in empty)
            raise UserError(f"task(s) {empty} have no usable training item in {files}: the file holds no item, or every "
                            "item was skipped (a warning above then counts them); check data.tasks.<task>.train")
        self._mine_negatives(self.train_queries)
        sizes = [len(self.train_queries[t.name]) for t in self.tasks]
        self.task_batch_sizes = dict(
            zip((t.name for t in self.tasks), task_batch_sizes(self.batch_size, sizes, self.mix_temperature))
        )
        corpora = "; ".join(f"{len(corpus)} passages of {corpus.num_pages} pages" + (f" ({', '.join(tasks)})" if self.task_corpora else "")
                            for corpus, tasks in self.corpus_groups([t.name for t in self.tasks]))
        log.info(
            "corpus: %s; per task (train items, eval items, batch share): %s", corpora,
            {t.name: (len(self.train_queries[t.name]), len(self.eval_queries[t.name]), self.task_batch_sizes[t.name])
             for t in self.tasks},
        )

    def _mine_negatives(self, queries_by_task: Mapping[str, list[Query]], split: str = "train") -> None:
        """Negative pools: read from ``negatives_dir`` when given, else filled by ``negatives_miner``.

        Training queries read ``<task>.jsonl``; held-out queries (``split`` not train) read
        ``<task>.<split>.jsonl`` when every task has one (``multiret prepare kilt`` writes
        them: at KILT's 36M passages an in-memory BM25 index is out of reach).
        """
        heldout = split != "train"
        if self.negatives_dir is not None and (not heldout or all(
                negatives_file(self.negatives_dir, task, split).is_file() for task in queries_by_task)):
            for task, queries in queries_by_task.items():
                read_negatives(self.negatives_dir, task, queries, self.corpus_of(task), split)
        elif self.negatives_miner is not None and self.n_negatives > 0 and self.bm25_top_k > 0:
            for corpus, tasks in self.corpus_groups(list(queries_by_task)):
                self.negatives_miner(corpus, {task: queries_by_task[task] for task in tasks}, self.bm25_top_k)

    def _batches(self, queries_by_task: Mapping[str, list[Query]], seed: int, start_step: int) -> MultitaskBatches:
        if self.collator is None:
            raise RuntimeError("batches need a tokenizer: build the data module with the model's tokenizer")
        streams = [TaskStream(t, queries_by_task[t.name], self.task_batch_sizes[t.name], self.task_corpora.get(t.name))
                   for t in self.tasks]
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        return MultitaskBatches(
            streams, self.corpus, self.collator, self.n_negatives, seed,
            start_step=start_step, micro_batches=self.micro_batches, rank=rank, world_size=world_size,
            first_positive=self.first_positive, first_negatives=self.first_negatives,
        )

    def train_dataloader(self) -> DataLoader:
        start = self.step_offset + (self.trainer.global_step if self.trainer is not None else 0)
        return DataLoader(self._batches(self.train_queries, self.seed, start), batch_size=None, num_workers=0)

    def heldout_queries(self, split: str | None = None) -> dict[str, list[Query]]:
        """Each task's queries of ``split`` (the eval split, or the validation split) with positives and hard negatives,
        as training queries get them."""
        split = split or self.eval_split
        if split not in (self.eval_split, self.validation_split):
            raise ValueError(f"split {split!r} is neither data.eval_split nor data.validation_split")
        self.setup("fit")
        read = self.eval_queries if split == self.eval_split else self.validation_queries
        heldout = {name: self._positives(name, queries, split) for name, queries in read.items()}
        self._mine_negatives(heldout, split)
        return heldout

    def heldout_batches(self) -> MultitaskBatches:
        """Multitask batches of the eval split, built like training batches (to measure task gradients)."""
        return self._batches(self.heldout_queries(), self.seed + 1, 0)
