"""multiret's KILT metrics against a second statement of KILT's definitions, on 1,200 random items.

The statement below is written from what KILT's ``eval_retrieval.py`` computes, not from how
multiret computes it: R-precision as a set intersection per gold output, and the evidence-set
rank as a sort (each set placed where its last guessed page is, each non-evidence page where
it is) instead of multiret's walk that moves partial markers. The two must agree on every
item and on the averages over a file.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from multiret.data.jsonl import write_jsonl
from multiret.eval.kilt_metrics import evaluate_kilt, evaluate_kilt_files

CASES = 1200
PAGES = [str(p) for p in range(1, 13)]  # few pages, so that sets overlap and guesses hit them often
KS = (1, 2, 3, 5, 10)


def _clean(value: Any) -> str:
    return str(value).strip()


def _distinct(values: list[str]) -> list[str]:
    ranked: list[str] = []
    for value in values:
        if value not in ranked:
            ranked.append(value)
    return ranked


def reference_scores(gold: dict, guess: dict, ks: list[int]) -> dict[str, float]:
    """One item's KILT page-level scores, stated from the definitions."""
    [ranked_output] = [o for o in guess["output"] if "provenance" in o]
    ranked = _distinct([_clean(p["wikipedia_id"]) for p in ranked_output["provenance"]])
    # R-precision: each gold output on its own (no provenance: no pages, score 0); the best output counts.
    per_output = [{_clean(p["wikipedia_id"]) for p in o.get("provenance", [])} for o in gold["output"]]
    scores = {"Rprec": max((len(pages & set(ranked[:len(pages)])) / len(pages) if pages else 0.0) for pages in per_output)}
    # Evidence sets: distinct page sets of the outputs that have a provenance list, first occurrence first.
    sets: list[frozenset[str]] = []
    for output in gold["output"]:
        if "provenance" in output and frozenset(_clean(p["wikipedia_id"]) for p in output["provenance"]) not in sets:
            sets.append(frozenset(_clean(p["wikipedia_id"]) for p in output["provenance"]))
    position = {page: i for i, page in enumerate(ranked)}
    entries = [(i, -1, False) for i, page in enumerate(ranked) if not any(page in s for s in sets)]
    for j, pages in enumerate(sets):
        seen = [position[p] for p in pages if p in position]
        if seen:  # placed at its last guessed page; a set completed there is a hit, one still missing pages is not
            entries.append((max(seen), j, len(seen) == len(pages)))
    hits_in_order = [hit for _, _, hit in sorted(entries)]
    for k in ks:
        hits = sum(hits_in_order[:k]) if sets else 0
        scores[f"precision@{k}"] = hits / k
        if k > 1:
            scores[f"recall@{k}"] = hits / len(sets) if sets else 0.0
            scores[f"success_rate@{k}"] = float(hits > 0)
    return scores


def _page(rng: random.Random) -> Any:
    """A page id as files hold them: mostly strings, some ints, some with stray spaces."""
    page = rng.choice(PAGES)
    return rng.choice([page, page, int(page), f" {page}", f"{page} "])


def random_item(rng: random.Random, item_id: str) -> tuple[dict, dict]:
    """A gold record with 1-5 outputs (multi-page, answer-only, empty, repeated) and a guess ranking with repeats."""
    outputs: list[dict] = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.random()
        if kind < 0.15:
            outputs.append({"answer": "a"})
        elif kind < 0.2:
            outputs.append({"answer": "a", "provenance": []})
        elif kind < 0.3 and outputs:
            outputs.append(dict(rng.choice(outputs)))
        else:
            outputs.append({"answer": "a", "provenance": [{"wikipedia_id": _page(rng)} for _ in range(rng.randint(1, 4))]})
    guesses = [{"wikipedia_id": _page(rng)} for _ in range(rng.randint(0, 14))]
    guess_outputs = [{"provenance": guesses}]
    if rng.random() < 0.2:
        guess_outputs.insert(rng.randint(0, 1), {"answer": "an answer-only output, dropped as KILT does"})
    return {"id": item_id, "input": "q", "output": outputs}, {"id": item_id, "output": guess_outputs}


@pytest.fixture(scope="module")
def cases() -> list[tuple[dict, dict, list[int]]]:
    rng = random.Random(20260101)
    return [(*random_item(rng, f"q{i}"), sorted(rng.sample(KS, rng.randint(1, len(KS))))) for i in range(CASES)]


def test_the_cases_cover_what_the_definitions_distinguish(cases):
    multi_output = sum(len(g["output"]) > 1 for g, _, _ in cases)
    multi_page = sum(any(len(o.get("provenance", [])) > 1 for o in g["output"]) for g, _, _ in cases)
    scored = [reference_scores(g, p, ks) for g, p, ks in cases]
    assert multi_output > CASES / 2 and multi_page > CASES / 2
    assert 0.1 < sum(s["Rprec"] > 0 for s in scored) / CASES < 0.9
    assert any(0 < s["Rprec"] < 1 for s in scored) and any(0 < s.get("recall@10", 0) < 1 for s in scored)


def test_every_item_scores_as_the_definitions_say(cases):
    for gold, guess, ks in cases:
        assert evaluate_kilt([gold], [guess], ks) == pytest.approx(reference_scores(gold, guess, ks), abs=1e-12), gold["id"]


def test_a_file_of_all_items_averages_as_the_definitions_say(cases, tmp_path):
    write_jsonl(tmp_path / "gold.jsonl", [g for g, _, _ in cases])
    guesses = [p for _, p, _ in cases]
    random.Random(1).shuffle(guesses)  # matched by id, not by line
    write_jsonl(tmp_path / "guess.jsonl", guesses)
    per_item = [reference_scores(g, p, list(KS)) for g, p, _ in cases]
    expected = {name: sum(s[name] for s in per_item) / CASES for name in per_item[0]}
    assert evaluate_kilt_files(tmp_path / "gold.jsonl", tmp_path / "guess.jsonl", KS) == pytest.approx(expected, abs=1e-12)
