"""Per-task rules that turn KILT's eight training tasks into the files `data=kilt` reads.

Each task keeps KILT's record shape (``id``, ``input``, ``output[].provenance[]``) so that
``multiret.data.kilt.read_queries`` and KILT's scorer read the prepared files unchanged; only
the fields retrieval needs are kept. Counts of everything that cannot be used (items without
provenance, provenance to pages absent from the passage corpus, TriviaQA ids without a
question) are returned for the report; nothing is dropped silently.

The task table itself (which tasks, in KILT's order; the prepared file of each split; which
tasks take every passage of a gold page as a positive; the prompt words and query lengths,
which only the data module reads) has one home, ``conf/data/kilt.yaml``: :data:`KILT_TASKS`
is read from there, so `prepare kilt` writes exactly the files `data=kilt` reads. This module
holds the rules: KILT's source file names, TriviaQA's questions joined by id, AIDA's window.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from multiret.atomic import atomic_file
from multiret.configs import CONFIG_DIR
from multiret.data.jsonl import DataFormatError, iter_jsonl
from multiret.data.kilt import validated_outputs
from multiret.prepare.files import count_records

log = logging.getLogger(__name__)

START_ENT, END_ENT = "[START_ENT]", "[END_ENT]"
AIDA_WINDOW_WORDS = 64  # words kept on each side of the mention (the reference keeps 64 on the left)
DEFAULT_MAX_TRAIN = {"trex": 100_000, "structured_zeroshot": 100_000}  # the reference keeps 100k of each


KILT_DATA_CONFIG = Path(CONFIG_DIR) / "data" / "kilt.yaml"


@dataclass(frozen=True)
class KiltTask:
    """One KILT task as ``conf/data/kilt.yaml`` lists it: its prepared files and positive rule."""

    name: str
    train: str
    dev: str
    all_passages_positive: bool = False

    def kilt_file(self, split: str) -> str:
        """KILT's file name of a split; TriviaQA's files hold ids only (``_id`` in the name)."""
        if self.name == "triviaqa":
            return f"triviaqa-{split}_id-kilt.jsonl"
        return f"{self.name}-{split}-kilt.jsonl"

    def prepared_file(self, split: str) -> str:
        """The file a prepare step writes for ``split``: the data config's for ``train`` and ``dev``; another split
        (`prepare dpr`'s held-out ``val``), which no data config names, ``<task>-<split>.jsonl``."""
        return {"train": self.train, "dev": self.dev}.get(split, f"{self.name}-{split}.jsonl")


def read_kilt_tasks(path: Path = KILT_DATA_CONFIG) -> dict[str, KiltTask]:
    """The KILT tasks of a data config (its ``tasks`` and ``all_passages_positive``), in its order."""
    data = OmegaConf.load(path)
    every_passage = set(data.all_passages_positive)
    return {str(name): KiltTask(str(name), str(spec.train), str(spec.dev), name in every_passage)
            for name, spec in data.tasks.items()}


KILT_TASKS: dict[str, KiltTask] = read_kilt_tasks()
SPLITS = ("train", "dev")


class PageIndex(Protocol):
    page_key: str  # the provenance field its pages are keyed by (wikipedia_id, or title for a file without page ids)

    def rows_of_page(self, page_id: str) -> list[int]: ...


def aida_window(text: str, words: int = AIDA_WINDOW_WORDS, whole_right: bool = False) -> str:
    """The mention with ``words`` words of context on each side (``whole_right``: on the left only).

    AIDA inputs are whole news documents with one ``[START_ENT] ... [END_ENT]`` mention; the
    query encoder sees 128 tokens, so the document is cut around the mention (the reference
    keeps 64 words on the left and everything after the mention, which its tokenizer
    truncates: ``whole_right``).
    """
    start, end = text.find(START_ENT), text.find(END_ENT)
    if start < 0 or end < start:
        raise ValueError(f"no {START_ENT} ... {END_ENT} mention")
    end += len(END_ENT)
    left = text[:start].split()[-words:] if words else []
    right = text[end:].split() if whole_right else text[end:].split()[:words]
    return " ".join([*left, text[start:end].strip(), *right])


def load_triviaqa_questions(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """``QuestionId → Question`` from TriviaQA json files (``{"Data": [{"QuestionId", "Question", ...}]}``)."""
    questions: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: TriviaQA question file not found (pass the files of TriviaQA's rc/qa release)")
        with path.open(encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
        if not isinstance(data, dict) or not isinstance(data.get("Data"), list):
            raise DataFormatError(f"{path}: expected a TriviaQA json object with a 'Data' list")
        for i, item in enumerate(data["Data"]):
            if not isinstance(item, dict) or "QuestionId" not in item or not isinstance(item.get("Question"), str):
                raise DataFormatError(f"{path}: Data[{i}] needs 'QuestionId' and a string 'Question'")
            questions[str(item["QuestionId"]).strip()] = item["Question"]
    return questions


def _outputs(record: dict[str, Any], where: str, page_key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The outputs reduced to answer + provenance (page, title, paragraph span), and the distinct gold pages (by ``page_key``)."""
    kept: list[dict[str, Any]] = []
    pages: list[str] = []
    for output, provenance in validated_outputs(record, where, page_key):
        entry: dict[str, Any] = {k: output[k] for k in ("answer",) if k in output}
        if provenance:
            entry["provenance"] = []
            for item in provenance:
                page = str(item[page_key]).strip()
                entry["provenance"].append(
                    {k: str(item[k]).strip() if k == "wikipedia_id" else item[k]
                     for k in ("wikipedia_id", "title", "start_paragraph_id", "end_paragraph_id") if k in item}
                )
                if page not in pages:
                    pages.append(page)
        kept.append(entry)
    return kept, pages


def sample_order(total: int, limit: int | None, seed: int) -> list[int] | None:
    """Positions of the records a seeded down-sampling keeps, in the order drawn (None = keep all).

    With seed 42 they are the items, in its order, of the reference's
    ``random.seed(42); random.sample(items, 100000)``: ``sample`` draws positions alone.
    """
    if limit is None or limit >= total:
        return None
    return random.Random(seed).sample(range(total), limit)


def sample_positions(total: int, limit: int | None, seed: int) -> set[int] | None:
    """Positions of the records kept by a seeded down-sampling (None = keep all)."""
    order = sample_order(total, limit, seed)
    return None if order is None else set(order)


def convert_split(
    task: KiltTask,
    split: str,
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    corpus: PageIndex,
    questions: dict[str, str] | None = None,
    limit: int | None = None,
    seed: int = 13,
    show_progress: bool = True,
) -> dict[str, int]:
    """Write one prepared split and return its counts.

    ``limit`` keeps a seeded random sample of that many records, in file order. Positives
    follow the data module's rule (:func:`multiret.data.kilt.attach_positives`): the first
    passage of each gold page, or every passage of it for AIDA; ``positives`` counts them.
    """
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: KILT file of task {task.name!r} ({split}) not found; "
                                f"expected {task.kilt_file(split)} in --kilt-dir")
    if task.name == "triviaqa" and questions is None and source.name == task.kilt_file(split):
        raise ValueError("triviaqa needs the TriviaQA question files (--triviaqa-questions FILE ...): KILT's files hold ids only")
    total = count_records(source)
    keep = sample_positions(total, limit, seed)
    counts = {"read": total, "items": 0, "no_provenance": 0, "missing_question": 0, "provenance_pages": 0,
              "missing_pages": 0, "items_without_corpus_page": 0, "positives": 0}
    seen: set[str] = set()
    with atomic_file(out) as handle:
        records = tqdm(iter_jsonl(source), total=total, desc=f"{task.name} {split}", disable=not show_progress)
        for position, (line_number, record) in enumerate(records):
            if keep is not None and position not in keep:
                continue
            where = f"{source}:{line_number}"
            qid = record.get("id")
            if qid is None:
                raise DataFormatError(f"{where}: expected an object with an 'id'")
            qid = str(qid).strip()
            if qid in seen:
                raise DataFormatError(f"{where}: duplicate id {qid!r}")
            seen.add(qid)
            text = _query_text(task, record, qid, questions, where)
            if text is None:
                counts["missing_question"] += 1
                continue
            outputs, pages = _outputs(record, where, corpus.page_key)
            found = [page for page in pages if corpus.rows_of_page(page)]
            counts["items"] += 1
            counts["no_provenance"] += not pages
            counts["provenance_pages"] += len(pages)
            counts["missing_pages"] += len(pages) - len(found)
            counts["items_without_corpus_page"] += bool(pages) and not found
            counts["positives"] += sum(
                len(corpus.rows_of_page(page)) if task.all_passages_positive else 1 for page in found
            )
            handle.write(json.dumps({"id": qid, "input": text, "output": outputs}, ensure_ascii=False) + "\n")
    if counts["missing_pages"] or counts["missing_question"] or counts["no_provenance"]:
        log.warning(
            "%s %s: %d items; %d without provenance; %d of %d gold pages not in the passage corpus (%d items have none there)%s",
            task.name, split, counts["items"], counts["no_provenance"], counts["missing_pages"], counts["provenance_pages"],
            counts["items_without_corpus_page"],
            f"; {counts['missing_question']} ids without a TriviaQA question (left out)" if counts["missing_question"] else "",
        )
    return counts


def _query_text(task: KiltTask, record: dict[str, Any], qid: str, questions: dict[str, str] | None, where: str) -> str | None:
    """The query: KILT's ``input``, TriviaQA's question joined by id (None if absent), AIDA's mention window."""
    if questions is not None and task.name == "triviaqa":
        return questions.get(qid)
    text = record.get("input")
    if not isinstance(text, str):
        raise DataFormatError(f"{where}: expected a string 'input'")
    if task.name == "aidayago2":
        try:
            return aida_window(text)
        except ValueError as error:
            raise DataFormatError(f"{where}: AIDA input has {error}") from None
    return text
