"""A trained retriever as a Python object: encode queries and passages, search a run's index.

:class:`Retriever` wraps the very model, collator and index functions the evaluation stage
uses (``stages.build``'s model, ``encode_texts``, ``stages.load_index``), so its vectors are
the evaluation stage's. It opens a run folder (``from_run``) or a folder written by
``multiret export --format hf`` (``from_export``: encoding only, no index).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from multiret.data.collator import PromptCollator
from multiret.data.corpus import Passages
from multiret.data.datamodule import MultitaskDataModule
from multiret.data.tasks import TaskSpec, select_tasks
from multiret.data.template import format_passage
from multiret.errors import UserError
from multiret.experiment import stages
from multiret.index.dense import encode_task_queries, model_device
from multiret.index.encode import encode_texts
from multiret.index.faiss_index import INDEX, DenseIndex
from multiret.model.biencoder import BiEncoder
from multiret.model.encoder import TextEncoder

log = logging.getLogger(__name__)

CHECKPOINTS = ("indexed", "best", "last")  # indexed: the weights the run's index and evaluation used
EXPORT_CONFIG = "multiret.json"  # what an exported Hugging Face folder adds for the Retriever
SOFT_PROMPT_FILE = "soft_prompt.safetensors"
PASSAGE_ENCODER = "passage"  # the passage encoder's folder in an export, when it is not the query encoder
PAGE_DEPTH = 10  # passages searched per page asked for, since pages are ranked by their first passage (as KILT scores)


@dataclass(frozen=True)
class TrainedCheckpoint:
    """A run folder, its resolved config, the checkpoint chosen in it, and why that one (``note``, or None)."""

    run: Path
    config: DictConfig
    path: Path
    note: str | None = None


def find_checkpoint(run_or_ckpt: str | Path, which: str = "indexed") -> TrainedCheckpoint:
    """The run folder of ``run_or_ckpt`` (a run folder, or a ``.ckpt`` in its ``checkpoints/``) and its checkpoint.

    ``which="indexed"`` takes the weights the run's index and evaluation were built with (the
    manifest's ``evaluated_weights``: best or last), so a search matches its index;
    ``which="best"`` takes ``checkpoints/best.ckpt`` and falls back to ``last.ckpt`` with a note
    when the run kept no best checkpoint.
    """
    if which not in CHECKPOINTS:
        raise UserError(f"--checkpoint {which!r}; choose one of {', '.join(CHECKPOINTS)}")
    given = Path(run_or_ckpt)
    if not given.exists():
        raise UserError(f"{given} does not exist; give a run folder such as logs/train/runs/<time>, or a .ckpt in its checkpoints/")
    run = given.parent.parent if given.is_file() else given
    if not (run / "config.yaml").is_file():
        where = f"{given} is not in a run's checkpoints/ folder" if given.is_file() else f"{given} is not a run folder"
        raise UserError(f"{where} (no config.yaml at {run}); give a run folder such as logs/train/runs/<time>, "
                        "or a .ckpt inside its checkpoints/")
    config = OmegaConf.load(run / "config.yaml")
    if config.get("retriever", "dense") != "dense":
        raise UserError(f"{run} is a {config.retriever} run: it has no trained model to use")
    if given.is_file():
        return TrainedCheckpoint(run, config, given)
    folder = run / "checkpoints"
    note = None
    if which == "indexed":
        which = indexed_weights(run)
    if which == "best":
        if (folder / "best.ckpt").is_file():
            return TrainedCheckpoint(run, config, folder / "best.ckpt")
        note = f"{run} has no checkpoints/best.ckpt: using last.ckpt"
    if not (folder / "last.ckpt").is_file():
        raise UserError(f"{run} has no checkpoints/last.ckpt (was its training stage run?); "
                        "train it with `multiret train ...`, or give a .ckpt path")
    return TrainedCheckpoint(run, config, folder / "last.ckpt", note)


def indexed_weights(run: Path) -> str:
    """Which checkpoint (best or last) the run's index and evaluation used, from its manifest; last where it says none."""
    manifest = run / "manifest.json"
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("evaluated_weights") if manifest.is_file() else None
    except json.JSONDecodeError as error:
        raise UserError(f"{manifest} is not valid JSON ({error}); it may be truncated: re-run the job or delete it") from error
    return str(recorded["checkpoint"]) if recorded else "last"


def run_tasks(config: DictConfig) -> list[TaskSpec]:
    """The trained tasks of a run's config, in their order, with their prompt words and query lengths."""
    tasks = OmegaConf.to_container(config.data.tasks, resolve=True)
    return select_tasks(tasks, list(config.data.task_names))


@dataclass(frozen=True)
class Hit:
    """One retrieved page: its rank (from 1), the score of its best passage, the page's id and title, that passage's id."""

    rank: int
    score: float
    page_id: str
    title: str
    passage_id: str


class Retriever:
    """Encodes prompted queries and templated passages exactly as training and evaluation did.

    Build it with :meth:`from_run` (search needs a run, whose index it opens memory-mapped on
    the first search) or :meth:`from_export` (a ``multiret export --format hf`` folder).
    """

    def __init__(
        self,
        model: BiEncoder,
        tasks: Sequence[TaskSpec],
        max_passage_length: int,
        passage_template: str | None,
        config: DictConfig | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model = model.eval().to(model_device())
        self.tasks = {task.name: task for task in tasks}
        self.collator = PromptCollator(model.tokenizer, model.prompt_template, max_passage_length)
        self.passage_template = passage_template
        self.config = config
        self.batch_size = batch_size
        self._datamodule: MultitaskDataModule | None = None
        self._indexes: dict[Path, tuple[DenseIndex, Passages]] = {}

    @classmethod
    def from_run(cls, path: str | Path, checkpoint: str = "indexed", batch_size: int = 64) -> Retriever:
        """The model of a run folder (or of one ``.ckpt`` in it) with the weights of its ``checkpoint``: those its index
        was built with (indexed, the default), best or last."""
        found = find_checkpoint(path, checkpoint)
        if found.note:
            log.warning(found.note)
        return cls.from_config(found.config, found.path, batch_size)

    @classmethod
    def from_config(cls, config: DictConfig, ckpt_path: str | Path, batch_size: int = 64) -> Retriever:
        """The model ``config`` describes (a run's ``config.yaml``) with the weights of ``ckpt_path``."""
        model: BiEncoder = instantiate(config.model)
        stages.load_weights(model, str(ckpt_path), "checkpoint")
        return cls(model, run_tasks(config), int(config.data.max_passage_length), config.data.get("passage_template"),
                   config, batch_size)

    @classmethod
    def from_export(cls, folder: str | Path, batch_size: int = 64) -> Retriever:
        """A Hugging Face folder written by ``multiret export --format hf`` (the model, its tokenizer, ``multiret.json``)."""
        folder = Path(folder)
        if not (folder / EXPORT_CONFIG).is_file():
            raise UserError(f"{folder} has no {EXPORT_CONFIG}: it was not written by `multiret export --format hf`")
        saved = json.loads((folder / EXPORT_CONFIG).read_text(encoding="utf-8"))
        encoder = TextEncoder(str(folder), saved["pooling"], saved["normalize"])
        model = BiEncoder(encoder, optimizer=None, prompt=saved["prompt"])  # encoding only: no optimizer
        if not saved["shared_encoder"]:
            model.passage_encoder = TextEncoder(str(folder / PASSAGE_ENCODER), saved["pooling"], saved["normalize"])
        if model.soft_prompt is not None:
            model.soft_prompt.load_state_dict(load_file(folder / SOFT_PROMPT_FILE))
        tasks = [TaskSpec(train=None, dev=None, **spec) for spec in saved["tasks"]]
        return cls(model, tasks, saved["max_passage_length"], saved["passage_template"], None, batch_size)

    def export_config(self) -> dict[str, Any]:
        """What :meth:`from_export` reads back: pooling, encoders shared or not, prompt, tasks (prompt words, query lengths),
        passage length and template."""
        encoder: TextEncoder = self.model.query_encoder
        return {
            "pooling": encoder.pooling,
            "normalize": encoder.normalize,
            "shared_encoder": self.model.passage_encoder is encoder,
            "prompt": asdict(self.model.prompt),
            "tasks": [{"name": t.name, "prompt": t.prompt, "max_query_length": t.max_query_length}
                      for t in self.tasks.values()],
            "max_passage_length": self.collator.max_passage_length,
            "passage_template": self.passage_template,
        }

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``, or a one-line error listing the tasks this model was trained on."""
        if name not in self.tasks:
            raise UserError(f"unknown task {name!r}; this model was trained on: {', '.join(self.tasks)}")
        return self.tasks[name]

    def encode_queries(self, texts: Sequence[str], task: str, show_progress: bool = False) -> np.ndarray:
        """``(len(texts), dim)`` float32 query vectors, prompted (text or soft) and truncated as ``task``'s were."""
        return encode_task_queries(self.model, self.collator, self.task(task), texts, self.batch_size, show_progress)

    def passage_texts(self, passages: Sequence[tuple[str, str]]) -> list[str]:
        """The strings the passage encoder sees: each ``(title, text)`` filled into the run's passage template."""
        return [format_passage(self.passage_template, title, text) for title, text in passages]

    def encode_passages(self, passages: Sequence[tuple[str, str]], show_progress: bool = False) -> np.ndarray:
        """``(len(passages), dim)`` float32 vectors of ``(title, text)`` pairs, templated as the run's corpus was."""
        return encode_texts(
            self.passage_texts(passages), self.collator.passages, self.model.encode_passages,
            self.batch_size, self.model.device, "encoding passages", show_progress,
        )

    def search(self, queries: Sequence[str], task: str, k: int = 10) -> list[list[Hit]]:
        """The top ``k`` pages of the run's index for each query (pages ranked by their best passage, as KILT scores)."""
        if k < 1:
            raise UserError(f"k must be ≥ 1, got {k}")
        vectors = self.encode_queries(queries, task)
        index, corpus = self.open_index(task)
        scores, rows = index.search(vectors, min(index.size, k * PAGE_DEPTH))
        return [_pages(corpus, row_scores, row_ids, k) for row_scores, row_ids in zip(scores, rows)]

    def open_index(self, task: str) -> tuple[DenseIndex, Passages]:
        """The index (memory-mapped) ``task`` is searched in and the corpus it was built over, opened once each through
        the evaluation's loaders: the run's shared index, or the task's own (a BEIR dataset's)."""
        if self.config is None:
            raise UserError("this retriever was loaded from an exported folder and has no index; "
                            "use Retriever.from_run(RUN) to search a run's index")
        self.task(task)
        if self._datamodule is None:
            self._datamodule = run_datamodule(self.config, self.model)
        corpus, directory = next((corpus, directory) for corpus, tasks, directory in stages.corpora(self.config, self._datamodule)
                                 if task in [t.name for t in tasks])
        if directory not in self._indexes:
            if not (directory / INDEX).is_file():
                raise UserError(f"the run has no index ({directory / INDEX} is missing); build it with "
                                f"`{index_command(self.config)}`")
            self._indexes[directory] = (stages.load_index(self.config, corpus, directory, mmap=True), corpus)
        return self._indexes[directory]


def index_command(config: DictConfig) -> str:
    """The command that builds a run's index: its own overrides (from ``manifest.json``) as ``multiret index`` with its last checkpoint."""
    run = Path(config.paths.output_dir)
    manifest = run / "manifest.json"
    overrides = ["<the run's overrides>"]
    if manifest.is_file():
        command = json.loads(manifest.read_text(encoding="utf-8")).get("command") or []
        overrides = [a for a in command[1:] if "=" in a and not a.startswith(("stages=", "+stages=", "ckpt_path="))]
    return " ".join(["multiret index", *overrides, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                     f"index.dir={config.index.dir}"])


def run_datamodule(config: DictConfig, model: BiEncoder) -> MultitaskDataModule:
    """A run's data module set up as the evaluation stage sets it up: the corpora its indexes were built over."""
    datamodule = instantiate(config.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)
    datamodule.setup("evaluate")
    return datamodule


def _pages(corpus: Passages, scores: np.ndarray, rows: np.ndarray, k: int) -> list[Hit]:
    hits: list[Hit] = []
    seen: set[str] = set()
    for score, row in zip(scores.tolist(), rows.tolist()):
        if row < 0 or len(hits) == k:
            break
        page = corpus.page_ids[row]
        if page not in seen:
            seen.add(page)
            hits.append(Hit(len(hits) + 1, float(score), page, corpus.titles[row], corpus.ids[row]))
    return hits


def hits_as_dicts(hits: Sequence[Hit]) -> list[Mapping[str, Any]]:
    """Hits as plain mappings (for JSON)."""
    return [asdict(hit) for hit in hits]
