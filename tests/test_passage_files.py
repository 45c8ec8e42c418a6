"""Passage files in every accepted layout, read with csv quoting; the passage template; what a prepared folder holds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import bm25s
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from multiret.cli import main as cli
from multiret.data import passage_files
from multiret.data.corpus import Corpus, read_corpus, select_pages
from multiret.data.jsonl import DataFormatError, read_jsonl, write_jsonl
from multiret.data.kilt import attach_positives, read_queries
from multiret.data.store import PassageStore
from multiret.data.tasks import TaskSpec
from multiret.data.template import check_template, format_passage
from multiret.errors import UserError
from multiret.eval.retrieval import evaluate_task_rankings
from multiret.experiment.run import CONFIG_DIR, run
from multiret.index.bm25 import BM25Retriever, BM25Settings
from multiret.prepare.bm25_index import build_bm25_index, load_bm25_index, search
from multiret.prepare.passages import build_passage_store

from helpers import PAGES, kilt_files, page_words

# Each passage: id, text as written in the file (csv-quoted where needed), the text it must read back as, title, page.
PASSAGES = [
    ("1_0", '"He said ""zebra"" twice"', 'He said "zebra" twice', "Alpha", "1"),
    ("1_1", '"one\ttab and\na newline yak"', "one\ttab and\na newline yak", "Alpha", "1"),
    ("2_0", "plain words about the moon", "plain words about the moon", 'Beta "B"', "2"),
    ("2_1", "more plain words", "more plain words", 'Beta "B"', "2"),
]


def _quote(field: str) -> str:
    return f'"{field.replace(chr(34), chr(34) * 2)}"' if any(c in field for c in '"\t\n') else field


def _write(path: Path, layout: str, header: bool) -> Path:
    lines = []
    if layout == "kilt":
        lines += ["pid\ttext\twikipedia_title\twikipedia_id\tstart_paragraph\tend_paragraph"] if header else []
        lines += [f"{pid}\t{raw}\t{_quote(title)}\t{page}\t3\t4" for pid, raw, _, title, page in PASSAGES]
    elif layout == "dpr":
        lines += ["id\ttext\ttitle"] if header else []
        lines += [f"{pid}\t{raw}\t{_quote(title)}" for pid, raw, _, title, _ in PASSAGES]
    else:
        lines += ["title\twikipedia_id\tid\ttext\tsection"]
        lines += [f"{_quote(title)}\t{page}\t{pid}\t{raw}\tS" for pid, raw, _, title, page in PASSAGES]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


LAYOUT_FILES = [("kilt", True), ("kilt", False), ("dpr", True), ("dpr", False), ("named", True)]


@pytest.mark.parametrize("layout,header", LAYOUT_FILES)
def test_every_layout_reads_unquoted_text_into_the_corpus_the_store_and_bm25(tmp_path, layout, header):
    path = _write(tmp_path / "passages.tsv", layout, header)
    corpus = read_corpus(path)
    meta = build_passage_store(path, tmp_path / "store", show_progress=False)
    store = PassageStore(tmp_path / "store")
    assert meta["layout"] == layout and meta["passages"] == len(store) == len(corpus) == 4
    expected_pages = [title for *_, title, _ in PASSAGES] if layout == "dpr" else [page for *_, page in PASSAGES]
    for source in (corpus, store):
        assert list(source.ids) == [p[0] for p in PASSAGES]
        assert list(source.texts) == [p[2] for p in PASSAGES]
        assert list(source.titles) == [p[3] for p in PASSAGES]
        assert list(source.page_ids) == expected_pages
        assert source.passage_text(1) == "Title: Alpha Text: one\ttab and\na newline yak"
        assert source.rows_of_page(expected_pages[2]) == [2, 3]
    build_bm25_index(store, tmp_path / "bm25", show_progress=False)
    index = load_bm25_index(tmp_path / "bm25")
    assert {"zebra", "yak", "alpha", "title"} <= set(index.vocab_dict)  # the templated, unquoted text was indexed
    assert search(index, ["newline yak"], 1)[0][0] == 1 and search(index, ["zebra"], 1)[0][0] == 0


def test_a_layout_can_be_named_and_a_file_matching_none_fails_naming_the_line(tmp_path):
    five = tmp_path / "five.tsv"
    five.write_text("a\tb\tc\td\te\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"five.tsv:1: 5 tab-separated field\(s\).*match no passage layout; expected one of"):
        read_corpus(five)
    dpr = _write(tmp_path / "dpr.tsv", "dpr", True)
    with pytest.raises(DataFormatError, match=r"dpr.tsv:1: .*expected layout kilt: 6 columns"):
        read_corpus(dpr, layout="kilt")
    assert read_corpus(dpr, layout="dpr").page_key == "title"
    with pytest.raises(ValueError, match="passage layout 'tsv' is unknown"):
        read_corpus(dpr, layout="tsv")


def test_a_short_row_after_a_multi_line_record_names_its_own_line(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text('id\ttext\ttitle\n1\t"two\nlines"\tT\n2\tonly two\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"p.tsv:4: expected 3 tab-separated fields, got 2 \(layout dpr"):
        read_corpus(path)


def test_non_utf8_input_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("id\ttext\ttitle\n1\tfine\tT\n2\tcaf\u00e9\tT\n".encode("latin-1"))
    for read in (read_corpus, lambda p: build_passage_store(p, tmp_path / "store", show_progress=False)):
        with pytest.raises(DataFormatError, match=r"latin1.tsv:3: not UTF-8 \(byte 0xe9 at column 6\)"):
            read(path)


def test_duplicate_ids_name_the_file_the_id_and_both_lines(tmp_path):
    path = tmp_path / "dup.tsv"
    path.write_text('id\ttext\ttitle\n7\t"a\nb"\tT\n8\tc\tT\n7\td\tU\n', encoding="utf-8")
    message = r"dup.tsv:5: duplicate passage id '7' \(first at line 2\)"
    with pytest.raises(DataFormatError, match=message):
        read_corpus(path)
    with pytest.raises(DataFormatError, match=message):
        build_passage_store(path, tmp_path / "store", show_progress=False)


def test_a_field_over_the_csv_limit_is_reported_as_such(tmp_path, monkeypatch):
    path = tmp_path / "runaway.tsv"
    path.write_text('id\ttext\ttitle\n1\tok\tT\n2\t"opened and never closed\tT\n' + "x y\tz\n" * 400, encoding="utf-8")
    old = csv.field_size_limit(1000)
    monkeypatch.setattr(passage_files, "FIELD_LIMIT", 1000)
    try:
        with pytest.raises(DataFormatError, match=r"runaway.tsv:3: a field is longer than 1,000 characters, the csv size limit"):
            read_corpus(path)
    finally:
        csv.field_size_limit(old)


def test_the_template_is_checked_and_applied_the_same_way_by_corpus_and_store(tmp_path):
    assert format_passage("Title: {title} Text: {text}", "A", "b c") == "Title: A Text: b c"
    assert format_passage(None, "A", "b c") == "b c"
    for bad in ("{title}", "{text} {page}", "{text"):
        with pytest.raises(ValueError, match="data.passage_template"):
            check_template(bad)
    path = _write(tmp_path / "p.tsv", "kilt", False)
    build_passage_store(path, tmp_path / "store", show_progress=False)
    for source in (read_corpus(path, template="{title}: {text}"), PassageStore(tmp_path / "store", "{title}: {text}")):
        assert source.passage_text(2) == 'Beta "B": plain words about the moon'
        assert select_pages(source, ["2"]).passage_text(0) == 'Beta "B": plain words about the moon'
    assert Corpus.from_rows([("a", "t", "T", "1")], template=None).passage_text(0) == "t"


def test_a_dpr_file_keys_pages_by_title_and_gold_pages_by_provenance_title(tmp_path):
    path = _write(tmp_path / "p.tsv", "dpr", True)
    record = {"id": "q", "input": "zebra", "output": [{"provenance": [{"wikipedia_id": "99", "title": 'Beta "B"'}]}]}
    write_jsonl(tmp_path / "q.jsonl", [record])
    (query,) = read_queries(tmp_path / "q.jsonl", page_key="title")
    assert query.gold_pages == ['Beta "B"']
    corpus = read_corpus(path)
    (kept,) = attach_positives("t", [query], corpus)
    assert kept.positives == [2]
    scores = evaluate_task_rankings([TaskSpec("t", None, str(tmp_path / "q.jsonl"))], "dev", {"t": ["q"]}, {"t": [[2, 0]]},
                                    corpus, tmp_path / "eval")
    assert scores["t"]["Rprec"] == 1.0  # scored by title, since the file has no page ids
    assert read_jsonl(tmp_path / "eval" / "t-gold.jsonl")[0]["output"][0]["provenance"][0]["wikipedia_id"] == 'Beta "B"'


def _prepare_cli(kilt: Path, passages: Path, out: Path, questions: Path, *options: str) -> int:
    return cli(["prepare", "kilt", "--kilt-dir", str(kilt), "--passages", str(passages), "--out", str(out),
                "--triviaqa-questions", str(questions), "--bm25-top-k", "4", "--no-progress", *options])


@pytest.fixture(scope="module")
def nq_fever(tmp_path_factory) -> dict:
    """`prepare kilt --tasks nq,fever` over a passage file in KILT's six-column layout without a header."""
    root = tmp_path_factory.mktemp("nq-fever")
    files = kilt_files(root / "kilt")
    passages = root / "kilt-passages.tsv"
    rows = [f'{p}_{j}\t"{" ".join(page_words(p)[5 * j:5 * j + 5])}"\tPage {p}\t{p}\t{j}\t{j}' for p in PAGES for j in range(3)]
    passages.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert _prepare_cli(root / "kilt", passages, root / "out", files["questions"], "--tasks", "nq,fever") == 0
    return {"root": root, "out": root / "out", "passages": passages, **files}


def _compose_kilt(out: Path, run_dir: Path, model_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[
            "data=kilt", f"data.root={out}", "model=t5_prompted", f"model.encoder.path={model_dir}", "logger=csv",
            f"paths.output_dir={run_dir}", "trainer=cpu", "trainer.max_steps=2", "data.batch_size=4", "index.batch_size=16",
            *overrides])


def test_the_prepared_folder_says_which_tasks_it_holds_and_data_kilt_trains_on_them(nq_fever, tmp_path, tiny_t5_dir):
    report = json.loads((nq_fever["out"] / "prepare_report.json").read_text())
    assert report["prepared_tasks"] == ["nq", "fever"]
    assert report["settings"]["passage_template"] == "Title: {title} Text: {text}"
    assert report["settings"]["passage_layout"] == "kilt"
    results = run(_compose_kilt(nq_fever["out"], tmp_path / "run", tiny_t5_dir))
    assert set(results) == {"nq", "fever", "average"}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["passages"] == {"template": "Title: {title} Text: {text}", "layout": "auto"}


def test_a_task_asked_for_but_not_prepared_is_a_clear_error(nq_fever, tmp_path, tiny_t5_dir):
    cfg = _compose_kilt(nq_fever["out"], tmp_path / "run", tiny_t5_dir, "data.task_names=[nq,wow]")
    with pytest.raises(InstantiationException, match=r"data.task_names asks for wow, but .* holds only nq, fever"):
        instantiate(cfg.data)
    cfg = _compose_kilt(nq_fever["out"], tmp_path / "run", tiny_t5_dir, "data.passage_template=null")
    with pytest.raises(InstantiationException, match=r"indexed BM25 and mined its negatives with 'Title: \{title\} Text: \{text\}'"):
        instantiate(cfg.data)


def test_a_later_run_adds_tasks_and_a_new_template_redoes_bm25_and_negatives(nq_fever, tmp_path):
    out = tmp_path / "out"
    kilt, passages, questions = nq_fever["root"] / "kilt", nq_fever["passages"], nq_fever["questions"]
    assert _prepare_cli(kilt, passages, out, questions, "--tasks", "nq,fever") == 0
    assert _prepare_cli(kilt, passages, out, questions, "--tasks", "hotpotqa") == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["prepared_tasks"] == ["nq", "hotpotqa", "fever"]
    assert _prepare_cli(kilt, passages, out, questions, "--tasks", "hotpotqa", "--passage-template", "{text}") == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["steps"]["ran"] == ["bm25", "negatives:hotpotqa"]
    assert report["prepared_tasks"] == ["hotpotqa"]  # nq's and fever's negatives came from the old index
    assert "title" not in load_bm25_index(out / "bm25").vocab_dict
    assert read_jsonl(out / "negatives" / "hotpotqa.jsonl")


def test_prepare_kilt_over_a_dpr_file_matches_gold_pages_by_title(nq_fever, tmp_path):
    passages = tmp_path / "dpr.tsv"
    rows = ["id\ttext\ttitle"] + [f'{p}_{j}\t"{" ".join(page_words(p)[5 * j:5 * j + 5])}"\tPage {p}'
                                  for p in PAGES for j in range(3)]
    passages.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert _prepare_cli(nq_fever["root"] / "kilt", passages, out, nq_fever["questions"], "--tasks", "nq") == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["settings"]["passage_layout"] == "dpr"
    assert report["tasks"]["nq"]["train"]["missing_pages"] == 2 and report["tasks"]["nq"]["train"]["positives"] == 4
    store = PassageStore(out / "passages")
    for query in read_queries(out / "nq-train.jsonl", page_key="title"):
        negatives = next(r["negatives"] for r in read_jsonl(out / "negatives" / "nq.jsonl") if r["id"] == query.qid)
        assert not {store.page_ids[store.row(p)] for p in negatives} & set(query.gold_pages)


def test_the_recorded_bm25_k1_and_b_are_the_ones_the_index_is_scored_with(nq_fever, tmp_path):
    """`--bm25-k1/--bm25-b` reach the step's marker, bm25s's params file and the scores alike."""
    out = tmp_path / "out"
    assert _prepare_cli(nq_fever["root"] / "kilt", nq_fever["passages"], out, nq_fever["questions"], "--tasks", "nq",
                        "--bm25-k1", "1.5", "--bm25-b", "0.2") == 0
    marker = json.loads((out / ".done" / "bm25.json").read_text())["params"]
    written = json.loads((out / "bm25" / "params.index.json").read_text())
    assert (marker["k1"], marker["b"]) == (written["k1"], written["b"]) == (1.5, 0.2)
    store = PassageStore(out / "passages", "Title: {title} Text: {text}")
    query = " ".join(page_words(PAGES[0])[:3])
    index = load_bm25_index(out / "bm25")
    rows, scores = index.retrieve(bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False), k=5,
                                  show_progress=False)
    given, default = (BM25Retriever(store, settings, show_progress=False).search_scored([query], 5)[0]
                      for settings in (BM25Settings(k1=1.5, b=0.2), BM25Settings()))
    np.testing.assert_allclose(scores, given, rtol=1e-5)
    assert not np.allclose(scores, default, rtol=1e-3)  # the setting changes the scores
    with pytest.raises(UserError, match=r"BM25 needs k1 ≥ 0 and 0 ≤ b ≤ 1, got k1=0.9, b=2"):
        BM25Settings(b=2)
