"""KILT page-level retrieval metrics: R-precision, precision@k, recall@k, success_rate@k.

These reproduce ``kilt/eval_retrieval.py`` of KILT (Petroni et al., NAACL 2021) with
``rank_keys=wikipedia_id``, so multiret numbers are comparable with every published KILT
number. The rules are restated in ``docs/kilt-eval.md``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from multiret.data.jsonl import DataFormatError, parse_jsonl
from multiret.errors import UserError

log = logging.getLogger(__name__)

PAGE_KEY = "wikipedia_id"


@dataclass(frozen=True)
class PartialSet:
    """Rank marker of an evidence set that is covered only in part (KILT's ``evidence_set:i``)."""

    index: int


RankEntry = bool | PartialSet


def page_id(value: Any) -> str:
    """KILT compares page ids as stripped strings, so ``123``, ``"123"`` and ``" 123 "`` are one page."""
    return str(value).strip()


def _unique(ids: Iterable[str]) -> list[str]:
    """Drop repeats, keeping the first occurrence (KILT's ``_remove_duplicates``)."""
    return list(dict.fromkeys(ids))


def page_ranking(passage_pages: Sequence[str]) -> list[str]:
    """Turn the pages of a passage ranking into a page ranking: each page at its first passage's rank.

    KILT scores pages, not passages; a page retrieved through several passages counts once.
    """
    return _unique(page_id(page) for page in passage_pages)


def _item_id(record: Mapping[str, Any]) -> str:
    return page_id(record.get("id"))


def _outputs(record: Mapping[str, Any], side: str) -> list[Mapping[str, Any]]:
    outputs = record.get("output")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise DataFormatError(f"{side} record {_item_id(record)!r}: 'output' must be a list of objects")
    return outputs


def _provenance_pages(record: Mapping[str, Any], output: Mapping[str, Any], side: str) -> list[str]:
    provenance = output["provenance"]
    if not isinstance(provenance, list) or not all(isinstance(p, dict) and PAGE_KEY in p for p in provenance):
        raise DataFormatError(
            f"{side} record {_item_id(record)!r}: 'provenance' must be a list of objects with '{PAGE_KEY}'"
        )
    return [page_id(p[PAGE_KEY]) for p in provenance]


def gold_page_lists(gold_record: Mapping[str, Any]) -> list[list[str]]:
    """Distinct pages of every gold output, ``[]`` for an answer-only output.

    These are the per-output targets of R-precision; KILT keeps answer-only outputs here
    (they score 0), so they can never raise an item's maximum.
    """
    return [
        _unique(_provenance_pages(gold_record, output, "gold")) if "provenance" in output else []
        for output in _outputs(gold_record, "gold")
    ]


def gold_evidence_sets(gold_record: Mapping[str, Any]) -> list[set[str]]:
    """Distinct page sets of the gold outputs that carry provenance, in output order.

    Each set is one point of the rank for precision/recall/success (KILT). An output with
    an empty ``provenance`` list still counts as a set, one that can never be completed.
    """
    sets: list[set[str]] = []
    for output in _outputs(gold_record, "gold"):
        if "provenance" in output:
            pages = set(_provenance_pages(gold_record, output, "gold"))
            if pages not in sets:
                sets.append(pages)
    return sets


def guess_pages(guess_record: Mapping[str, Any]) -> list[str]:
    """The page ranking of a guess record: its only output with provenance, deduplicated.

    KILT drops answer-only guess outputs and requires exactly one with provenance.
    """
    with_provenance = [o for o in _outputs(guess_record, "guess") if "provenance" in o]
    if len(with_provenance) != 1:
        raise DataFormatError(
            f"guess record {_item_id(guess_record)!r}: expected exactly one output with 'provenance', "
            f"got {len(with_provenance)}" + (" (a gold record? are --gold and --guess swapped?)" if with_provenance else "")
        )
    return page_ranking(_provenance_pages(guess_record, with_provenance[0], "guess"))


def _rprecision_of_output(guesses: Sequence[str], gold_pages: Sequence[str]) -> float:
    if not gold_pages:
        return 0.0
    r = len(gold_pages)
    return sum(page in gold_pages for page in guesses[:r]) / r


def rprecision(guess_pages: Sequence[str], gold_record: Mapping[str, Any]) -> float:
    """R-precision of one item: best over gold outputs of |top-R guesses in the output's pages| / R.

    Taking the maximum means the guess only has to match one valid provenance (KILT).
    """
    guesses = page_ranking(guess_pages)
    return max((_rprecision_of_output(guesses, pages) for pages in gold_page_lists(gold_record)), default=0.0)


def evidence_rank(guess_pages: Sequence[str], evidence_sets: Sequence[set[str]]) -> list[RankEntry]:
    """Rank evidence sets as single points: a set enters as a hit once its last page is guessed.

    Follows KILT's walk: a guessed page is removed from every set holding it; for each such
    set the earlier partial marker is dropped and either a hit (set now empty) or a new
    marker is appended; a page in no set is appended as a miss.
    """
    remaining = [set(pages) for pages in evidence_sets]
    rank: list[RankEntry] = []
    for page in page_ranking(guess_pages):
        holders = [index for index, pages in enumerate(remaining) if page in pages]
        for index in holders:
            if PartialSet(index) in rank:
                rank.remove(PartialSet(index))
            remaining[index].discard(page)
            rank.append(PartialSet(index) if remaining[index] else True)
        if not holders:
            rank.append(False)
    return rank


def metric_names(ks: Iterable[int]) -> list[str]:
    """Result keys in KILT's names: precision for every k, recall and success only for k > 1."""
    names = ["Rprec"]
    for k in sorted(set(ks)):
        names.append(f"precision@{k}")
        if k > 1:
            names += [f"recall@{k}", f"success_rate@{k}"]
    return names


def _hits(rank: Sequence[RankEntry], k: int) -> int:
    return sum(entry is True for entry in rank[:k])


def ranking_metrics(guess_pages: Sequence[str], gold_record: Mapping[str, Any], ks: Iterable[int]) -> dict[str, float]:
    """precision@k, recall@k (k > 1) and success_rate@k (k > 1) of one item over its evidence sets.

    An item with no guesses or no evidence sets scores 0, as in KILT.
    """
    evidence_sets = gold_evidence_sets(gold_record)
    rank = evidence_rank(guess_pages, evidence_sets)
    scores: dict[str, float] = {}
    for k in sorted(set(ks)):
        hits = _hits(rank, k)
        scores[f"precision@{k}"] = hits / k
        if k > 1:
            scores[f"recall@{k}"] = hits / len(evidence_sets) if evidence_sets else 0.0
            scores[f"success_rate@{k}"] = float(hits > 0)
    return scores


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise UserError(f"ks must be a non-empty list of positive integers, got {ks}")
    return sorted(set(ks))


def _index_by_id(records: Iterable[Mapping[str, Any]], side: str) -> dict[str, Mapping[str, Any]]:
    by_id: dict[str, Mapping[str, Any]] = {}
    for record in records:
        if "id" not in record:
            raise DataFormatError(f"{side}: a record has no 'id'")
        item_id = _item_id(record)
        if item_id in by_id:
            raise DataFormatError(f"{side}: duplicate id {item_id!r}")
        by_id[item_id] = record
    return by_id


def _match_ids(gold: Mapping[str, Any], guess: Mapping[str, Any], gold_side: str, guess_side: str) -> None:
    for item_id in guess:
        if item_id not in gold:
            raise UserError(f"id {item_id!r} of {guess_side} is not in {gold_side}")
    for item_id in gold:
        if item_id not in guess:
            raise UserError(f"id {item_id!r} of {gold_side} has no guess in {guess_side}")


def evaluate_kilt(
    gold_records: Iterable[Mapping[str, Any]],
    guess_records: Iterable[Mapping[str, Any]],
    ks: Iterable[int],
    *,
    gold_side: str = "gold",
    guess_side: str = "guess",
) -> dict[str, float]:
    """Average KILT page-level metrics over all guess items, matched to gold by (stripped) id.

    Unlike KILT, which silently ignores extra guesses, every guess id must be in gold and
    every gold id must have a guess; ``gold_side``/``guess_side`` name the inputs in errors.
    """
    ks = _check_ks(ks)
    names = metric_names(ks)
    items = item_scores(gold_records, guess_records, ks, gold_side=gold_side, guess_side=guess_side)
    return {name: sum(s[name] for s in items.values()) / len(items) if items else 0.0 for name in names}


def item_scores(
    gold_records: Iterable[Mapping[str, Any]],
    guess_records: Iterable[Mapping[str, Any]],
    ks: Iterable[int],
    *,
    gold_side: str = "gold",
    guess_side: str = "guess",
) -> dict[str, dict[str, float]]:
    """Every guess item's KILT metrics, by (stripped) id: what :func:`evaluate_kilt` averages.

    Paired significance tests (``multiret compare --paired``) need the per-item scores, not
    only their mean; ids are matched exactly as in :func:`evaluate_kilt`.
    """
    ks = _check_ks(ks)
    gold = _index_by_id(gold_records, gold_side)
    guess = _index_by_id(guess_records, guess_side)
    _match_ids(gold, guess, gold_side, guess_side)
    scores: dict[str, dict[str, float]] = {}
    for item_id, guess_record in guess.items():
        pages = guess_pages(guess_record)
        scores[item_id] = {"Rprec": rprecision(pages, gold[item_id]), **ranking_metrics(pages, gold[item_id], ks)}
    return scores


def read_kilt_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a KILT jsonl file in one pass: ``-`` is stdin, and pipes such as ``<(...)`` work (no seeking)."""
    if str(path) == "-":
        return [record for _, record in parse_jsonl(sys.stdin.buffer, "<stdin>")]
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (expected a KILT JSON-lines file)")
    with open(path, "rb") as handle:
        return [record for _, record in parse_jsonl(handle, path)]


def _has_provenance(record: Mapping[str, Any]) -> bool:
    outputs = record.get("output")
    return isinstance(outputs, list) and any(isinstance(o, dict) and "provenance" in o for o in outputs)


def _looks_like_gold(record: Mapping[str, Any]) -> bool:
    """A KILT gold record: the question (``input``) and answers beside their provenance."""
    outputs = record.get("output") if isinstance(record.get("output"), list) else []
    return "input" in record and any(isinstance(o, dict) and "answer" in o and "provenance" in o for o in outputs)


def check_scorable(gold_records: Sequence[Mapping[str, Any]], guess_records: Sequence[Mapping[str, Any]],
                   gold_side: str = "gold", guess_side: str = "guess") -> list[str]:
    """Refuse inputs that cannot be scored; return warnings about inputs that look swapped.

    An empty file, or a gold file without a single provenance, would score 0.0 for every
    metric: those are errors. A guess file whose every record reads like KILT gold, beside a
    gold file none of whose records does, gets a warning (``--gold`` and ``--guess`` swapped?).
    """
    for side, records in ((gold_side, gold_records), (guess_side, guess_records)):
        if not records:
            raise DataFormatError(f"{side}: no record (the file is empty or blank); nothing to score")
    if not any(_has_provenance(r) for r in gold_records):
        raise DataFormatError(
            f"{gold_side}: no record has provenance, so every score would be 0 "
            "(a split without gold, such as KILT's test files, or --gold and --guess swapped?)"
        )
    if all(_looks_like_gold(r) for r in guess_records) and not any(_looks_like_gold(r) for r in gold_records):
        return [f"{guess_side} reads like a KILT gold file (every record has 'input' and answers with provenance) "
                f"and {gold_side} does not: are --gold and --guess swapped?"]
    return []


def evaluate_kilt_files(
    gold_path: str | os.PathLike[str], guess_path: str | os.PathLike[str], ks: Iterable[int],
    warn: Callable[[str], None] = log.warning,
) -> dict[str, float]:
    """:func:`evaluate_kilt` on two KILT jsonl files (``-`` is stdin), refused when unscorable (:func:`check_scorable`).

    Malformed lines fail with ``file:line``; warnings about swapped-looking inputs go to ``warn``.
    """
    if str(gold_path) == str(guess_path) == "-":
        raise UserError("--gold and --guess cannot both be '-' (stdin): give one of them as a file")
    gold_side, guess_side = f"gold file {gold_path}", f"guess file {guess_path}"
    gold, guess = read_kilt_file(gold_path), read_kilt_file(guess_path)
    for message in check_scorable(gold, guess, gold_side, guess_side):
        warn(message)
    return evaluate_kilt(gold, guess, ks, gold_side=gold_side, guess_side=guess_side)


def guess_record(query_id: str, page_ids: Iterable[str]) -> dict[str, Any]:
    """A KILT guess record for one query: a single output whose provenance is the page ranking."""
    return {"id": query_id, "output": [{"provenance": [{PAGE_KEY: page} for page in page_ids]}]}
