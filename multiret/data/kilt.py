"""KILT-format task files → queries with gold pages, and gold pages → positive passages."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field

from multiret.data.corpus import Passages
from multiret.data.jsonl import DataFormatError, iter_jsonl

log = logging.getLogger(__name__)


@dataclass
class Query:
    """One KILT item: its id, input text and the distinct gold pages of all its outputs."""

    qid: str
    text: str
    gold_pages: list[str]
    positives: list[int] = field(default_factory=list)
    negatives: list[int] = field(default_factory=list)


def validated_outputs(record: dict, where: str, page_key: str = "wikipedia_id") -> list[tuple[dict, list[dict]]]:
    """Each KILT output with its provenance list, checked (fails naming ``where``): items need the ``page_key`` field.

    ``page_key`` is ``wikipedia_id``, or ``title`` over a passage file without page ids (``dpr`` layout).
    """
    outputs = record.get("output", [])
    if not isinstance(outputs, list):
        raise DataFormatError(f"{where}: 'output' must be a list of objects")
    checked: list[tuple[dict, list[dict]]] = []
    for output in outputs:
        if not isinstance(output, dict):
            raise DataFormatError(f"{where}: each 'output' entry must be an object")
        provenance = output.get("provenance") or []
        if not isinstance(provenance, list):
            raise DataFormatError(f"{where}: 'provenance' must be a list of objects with {page_key!r}")
        for item in provenance:
            if not isinstance(item, dict) or page_key not in item:
                raise DataFormatError(f"{where}: each provenance entry needs a {page_key!r}")
        checked.append((output, provenance))
    return checked


def _gold_pages(record: dict, where: str, page_key: str) -> list[str]:
    pages: list[str] = []
    for _, provenance in validated_outputs(record, where, page_key):
        for item in provenance:
            page = str(item[page_key]).strip()
            if page not in pages:
                pages.append(page)
    return pages


def read_queries(
    path: str | os.PathLike[str], limit: int | None = None, seed: int = 0, page_key: str = "wikipedia_id",
) -> list[Query]:
    """Read a KILT jsonl file; with ``limit``, keep a seeded random sample of that size in file order.

    Gold pages are the provenance's ``page_key`` values (see :func:`validated_outputs`).
    Every record needs a string ``id`` and ``input``; violations fail with ``file:line``.
    """
    queries: list[Query] = []
    seen: set[str] = set()
    for line_number, record in iter_jsonl(path):
        where = f"{path}:{line_number}"
        qid, text = record.get("id"), record.get("input")
        if qid is None or not isinstance(text, str):
            raise DataFormatError(f"{where}: expected an object with 'id' and a string 'input'")
        qid = str(qid).strip()
        if qid in seen:
            raise DataFormatError(f"{where}: duplicate id {qid!r}")
        seen.add(qid)
        queries.append(Query(qid=qid, text=text, gold_pages=_gold_pages(record, where, page_key)))
    return sample_in_order(queries, limit, seed)


def sample_in_order(queries: list[Query], limit: int | None, seed: int) -> list[Query]:
    """A seeded random sample of ``limit`` queries, kept in their order (all of them without ``limit``)."""
    if limit is None or limit >= len(queries):
        return queries
    keep = set(random.Random(seed).sample(range(len(queries)), limit))
    return [q for i, q in enumerate(queries) if i in keep]


def keyed_by_title(record: dict) -> dict:
    """A gold record whose provenance ``wikipedia_id`` is its ``title``: how it is scored over a corpus keyed by title."""
    outputs = []
    for output in record.get("output", []):
        provenance = [{**item, "wikipedia_id": item.get("title", "")} for item in output.get("provenance") or []]
        outputs.append({**output, "provenance": provenance} if "provenance" in output else output)
    return {**record, "output": outputs}


def attach_positives(task: str, queries: list[Query], corpus: Passages, all_passages: bool = False) -> list[Query]:
    """Give each training query its positive passages; drop (and count, in one log line) the unusable.

    A gold page's positive is its first passage (the lead, where KILT provenance mostly
    points), or every passage of the page with ``all_passages`` (as the TACO reference does
    for AIDA). Items with no provenance, or whose gold pages are all missing from the corpus,
    cannot be trained on.
    """
    kept: list[Query] = []
    no_provenance = missing_pages = 0
    for query in queries:
        if not query.gold_pages:
            no_provenance += 1
            continue
        rows: list[int] = []
        for page in query.gold_pages:
            page_rows = corpus.rows_of_page(page)
            rows.extend(page_rows if all_passages else page_rows[:1])
        if not rows:
            missing_pages += 1
            continue
        query.positives = rows
        kept.append(query)
    if no_provenance or missing_pages:
        log.warning(
            "task %s: skipped %d of %d training items (%d without provenance, %d whose gold pages are not in the corpus)",
            task, no_provenance + missing_pages, len(queries), no_provenance, missing_pages,
        )
    return kept
