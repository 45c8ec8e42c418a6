"""`multiret prepare kilt`: passage store, per-task rules, report counts, BM25 negatives, resumption, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from multiret.cli import main as cli
from multiret.data.corpus import Corpus, read_corpus, select_pages
from multiret.data.jsonl import DataFormatError, read_jsonl
from multiret.data.kilt import attach_positives, read_queries
from multiret.data.negatives import drop_gold_pages, negatives_file, read_negatives
from multiret.data.store import PassageStore
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE
from multiret.experiment.run import CONFIG_DIR, run
from multiret.index.bm25 import BM25Retriever
from multiret.prepare import negatives, pipeline
from multiret.prepare.bm25_index import _write_vocabulary, build_bm25_index, load_bm25_index, search, top_rows
from multiret.prepare.kilt_tasks import KILT_TASKS, aida_window, convert_split
from multiret.prepare.passages import build_passage_store

from helpers import PAGES, kilt_files, page_query, passage_tsv, prepared_config


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kilt-raw")
    files = kilt_files(root / "kilt")
    return {"kilt": root / "kilt", "passages": passage_tsv(root / "passages.tsv"), **files}


def _prepare(raw: dict, out: Path, **options) -> dict:
    options.setdefault("max_train", {"trex": 3, "structured_zeroshot": 3})
    options.setdefault("bm25_top_k", 8)
    options.setdefault("workers", 1)
    return pipeline.prepare_kilt(raw["kilt"], raw["passages"], out, triviaqa_questions=[raw["questions"]],
                                 show_progress=False, **options)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared")
    return out, _prepare(raw, out)


def test_passage_store_round_trips_the_tsv(raw, tmp_path):
    meta = build_passage_store(raw["passages"], tmp_path / "store", show_progress=False)
    store, corpus = read_corpus(tmp_path / "store"), read_corpus(raw["passages"])
    assert isinstance(store, PassageStore) and meta["passages"] == len(store) == len(corpus) == 30 and meta["pages"] == 10
    assert list(store.ids) == corpus.ids and list(store.texts) == corpus.texts
    assert list(store.titles) == corpus.titles and list(store.page_ids) == corpus.page_ids
    assert [store.passage_text(r) for r in range(30)] == [corpus.passage_text(r) for r in range(30)]
    assert all(store.row(pid) == corpus.row(pid) for pid in corpus.ids)
    assert all(store.rows_of_page(str(p)) == corpus.rows_of_page(str(p)) == [3 * (p - 10) + j for j in range(3)] for p in PAGES)
    assert store.find("10_9") is None and not store.has_page("999") and not store.has_page("x") and store.has_page("12")
    with pytest.raises(KeyError):
        store.row("nope")
    assert (drop_gold_pages(store, ["12", "999"], range(30)).tolist() == drop_gold_pages(corpus, ["12", "999"], range(30)).tolist()
            == [r for r in range(30) if corpus.page_ids[r] != "12"])
    sub = select_pages(store, ["12", "999", "10"])
    assert isinstance(sub, Corpus) and sub.ids == ["10_0", "10_1", "10_2", "12_0", "12_1", "12_2"]
    assert sub.page_ids == ["10"] * 3 + ["12"] * 3 and sub.titles[0] == "Pagé 10"


@pytest.mark.parametrize("row,message", [("10_0\tdup\tT\t11", r":3: duplicate passage id '10_0' \(first at line 2\)"),
                                         ("x\tt\tT\tQ42", r":3: wikipedia_id 'Q42' is not an integer"),
                                         ("x\tt\tT", r":3: expected 4 tab-separated fields, got 3")])
def test_passage_store_rejects_bad_rows_naming_the_line(tmp_path, row, message):
    tsv = tmp_path / "p.tsv"
    tsv.write_text(f"id\ttext\ttitle\twikipedia_id\n10_0\ta b\tT\t10\n{row}\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        build_passage_store(tsv, tmp_path / "store", show_progress=False)
    assert not (tmp_path / "store").exists()


def test_chunked_bm25_index_scores_as_bm25s_in_memory(raw, tmp_path):
    build_passage_store(raw["passages"], tmp_path / "store", show_progress=False)
    store = PassageStore(tmp_path / "store")
    build_bm25_index(store, tmp_path / "bm25", chunk=7, show_progress=False)
    ours, reference = load_bm25_index(tmp_path / "bm25"), BM25Retriever(read_corpus(raw["passages"]), show_progress=False)
    queries = [page_query(p, 4) for p in PAGES] + ["w1 w2 w3 w4 w5 w6", "nothing known"]
    tokens = [q.split() for q in queries]
    _rows, scores = ours.retrieve(tokens, k=10, show_progress=False)
    ref_rows, ref_scores = reference._bm25.retrieve(tokens, k=10, show_progress=False)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    for query, words, rows in zip(queries, tokens, search(ours, queries, 10)):
        full = reference._bm25.get_scores(words)  # every passage's in-memory score
        matched = np.flatnonzero(full)
        expected = matched[np.lexsort((matched, -full[matched]))][:10]  # best first, equal scores by row
        assert rows.tolist() == expected.tolist() + [-1] * (10 - len(expected)), query


def test_top_rows_takes_non_zero_scores_best_first_and_equal_ones_by_row():
    scores = np.array([0, 2.5, 0, 1.0, 2.5, 0, 1.0, 3.0, 1.0], dtype=np.float32)
    assert top_rows(scores, 4).tolist() == [7, 1, 4, 3]  # of the three rows at 1.0, the first
    assert top_rows(scores, 7).tolist() == [7, 1, 4, 3, 6, 8, -1]  # six match: the seventh is no hit
    assert top_rows(np.zeros(5, dtype=np.float32), 2).tolist() == [-1, -1]
    rng = np.random.default_rng(0)
    for _ in range(200):  # mostly zeros and many equal scores, as BM25 gives
        scores = rng.choice(np.array([0, 0, 0, 0.5, 1.25, 2.0], dtype=np.float32), size=int(rng.integers(1, 60)))
        k = int(rng.integers(1, 70))
        matched = np.flatnonzero(scores)
        expected = sorted(matched.tolist(), key=lambda r: (-scores[r], r))[:k]
        assert top_rows(scores, k).tolist() == expected + [-1] * (k - len(expected))


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("template", [DEFAULT_PASSAGE_TEMPLATE, None, "{title} | {text}"])
def test_bm25_index_over_worker_processes_is_byte_identical_to_one_process_and_one_chunk(raw, tmp_path, template):
    """Chunk vocabularies renumbered in order and token ranges scored apart give the one-tokenizer files,
    and the workers index the passages through the store's own template."""
    build_passage_store(raw["passages"], tmp_path / "store", show_progress=False)
    store = PassageStore(tmp_path / "store", template)
    build_bm25_index(store, tmp_path / "whole", chunk=len(store), show_progress=False, workers=1)
    build_bm25_index(store, tmp_path / "parallel", chunk=7, show_progress=False, workers=3)
    assert _folder_bytes(tmp_path / "parallel") == _folder_bytes(tmp_path / "whole")
    vocabulary = load_bm25_index(tmp_path / "parallel").vocab_dict
    assert ("title" in vocabulary) == (template == DEFAULT_PASSAGE_TEMPLATE)  # the template's words are indexed only with it



@pytest.mark.parametrize("block", [1, 2, 100])
def test_vocabulary_written_in_blocks_is_one_compact_json_object(tmp_path, block):
    vocabulary = {"a": 0, 'quo"te': 1, "café": 2, "back\\slash": 3, "naïve": 4}
    _write_vocabulary(tmp_path / "vocab.json", vocabulary, block)
    text = (tmp_path / "vocab.json").read_text(encoding="utf-8")
    assert text == json.dumps(vocabulary, ensure_ascii=False, separators=(",", ":"))
    _write_vocabulary(tmp_path / "empty.json", {}, block)
    assert (tmp_path / "empty.json").read_text(encoding="utf-8") == "{}"

@pytest.mark.parametrize("options", [{"workers": 2}, {"workers": 2, "bm25_backend": "numpy"}])
def test_prepare_with_worker_processes_or_the_numpy_backend_writes_the_one_process_files(raw, prepared, tmp_path, options):
    out, _ = prepared  # bm25_backend auto: numba where installed
    _prepare(raw, tmp_path, **options)
    assert _folder_bytes(tmp_path / "bm25") == _folder_bytes(out / "bm25")
    assert _folder_bytes(tmp_path / "negatives") == _folder_bytes(out / "negatives")


def test_workers_must_be_positive(raw, tmp_path):
    with pytest.raises(ValueError, match=r"workers=0: expected a positive number of processes \(or None for every core\)"):
        _prepare(raw, tmp_path, workers=0)


def test_aida_window_keeps_the_mention_and_a_fixed_number_of_words_each_side():
    doc = "a b c d [START_ENT] New  York [END_ENT] e f g h"
    assert aida_window(doc, 2) == "c d [START_ENT] New  York [END_ENT] e f"
    assert aida_window("[START_ENT] X [END_ENT]", 64) == "[START_ENT] X [END_ENT]"
    with pytest.raises(ValueError, match="mention"):
        aida_window("no markers", 2)


def test_positives_follow_the_rule_first_passage_or_the_whole_page_for_aida(prepared):
    out, _ = prepared
    store = PassageStore(out / "passages")
    nq = {q.qid: q for q in attach_positives("nq", read_queries(out / "nq-train.jsonl"), store)}
    # nq2 cites only a missing page and nq3 has no provenance: they cannot be trained on
    assert set(nq) == {"nq0", "nq1", "nq4"}
    assert [store.ids[r] for r in nq["nq0"].positives] == ["10_0"]
    assert [store.ids[r] for r in nq["nq1"].positives] == ["11_0", "12_0"]
    assert [store.ids[r] for r in nq["nq4"].positives] == ["13_0"]
    aida = attach_positives("aidayago2", read_queries(out / "aidayago2-train.jsonl"), store, all_passages=True)
    assert [store.ids[r] for r in aida[0].positives] == ["15_0", "15_1", "15_2"]


def test_report_counts_missing_pages_and_unusable_items_per_task(prepared):
    out, report = prepared
    assert json.loads((out / "prepare_report.json").read_text()) == report
    nq = report["tasks"]["nq"]["train"]
    assert nq == {"read": 5, "items": 5, "no_provenance": 1, "missing_question": 0, "provenance_pages": 6,
                  "missing_pages": 2, "items_without_corpus_page": 1, "positives": 4}
    assert report["tasks"]["nq"]["dev"]["missing_pages"] == 0
    assert report["tasks"]["aidayago2"]["train"]["positives"] == 3
    for task in set(KILT_TASKS) - {"nq"}:
        assert report["tasks"][task]["train"]["missing_pages"] == 0, task
    settings = report["settings"]["tasks"]
    assert [t for t, s in settings.items() if s["all_passages_positive"]] == ["aidayago2"]
    assert settings["nq"] == {"train": "nq-train.jsonl", "dev": "nq-dev.jsonl", "all_passages_positive": False}
    assert "max_passage_length" not in report["settings"]  # a training setting (data.max_passage_length): prepare uses none


def test_triviaqa_questions_are_joined_by_id_and_unknown_ids_counted(prepared, raw):
    out, report = prepared
    records = read_jsonl(out / "triviaqa-train.jsonl")
    assert [(r["id"], r["input"]) for r in records] == [("tqa0", page_query(14)), ("tqa1", page_query(15))]
    assert report["tasks"]["triviaqa"]["train"]["missing_question"] == 1
    assert report["tasks"]["triviaqa"]["dev"]["missing_question"] == 0


def test_inputs_keep_their_shapes_and_aida_is_windowed(prepared, raw):
    out, _ = prepared
    wow = read_jsonl(out / "wow-train.jsonl")[0]
    assert wow["input"].count("\n") == 2
    raw_trex = {r["id"]: r["input"] for r in read_jsonl(raw["kilt"] / "trex-train-kilt.jsonl")}
    assert all(r["input"] == raw_trex[r["id"]] and " [SEP] " in r["input"] for r in read_jsonl(out / "trex-train.jsonl"))
    aida = read_jsonl(out / "aidayago2-train.jsonl")[0]["input"]
    assert aida == aida_window(raw["aida_doc"]) and aida.split()[0] == "L36" and aida.split()[-1] == "R63"
    kept = read_jsonl(out / "nq-train.jsonl")[0]["output"][0]["provenance"][0]
    assert kept == {"wikipedia_id": "10", "title": "Page 10", "start_paragraph_id": 2, "end_paragraph_id": 2}


def test_down_sampling_is_seeded_sized_and_keeps_file_order(prepared, raw, tmp_path):
    out, report = prepared
    ids = [r["id"] for r in read_jsonl(out / "trex-train.jsonl")]
    assert len(ids) == 3 == report["tasks"]["trex"]["train"]["items"] and ids == sorted(ids)
    assert report["tasks"]["trex"]["dev"]["items"] == 2  # dev splits are never down-sampled
    store = PassageStore(out / "passages")
    source = raw["kilt"] / "trex-train-kilt.jsonl"

    def sample(seed: int) -> list[str]:
        convert_split(KILT_TASKS["trex"], "train", source, tmp_path / "t.jsonl", store, limit=3, seed=seed, show_progress=False)
        return [r["id"] for r in read_jsonl(tmp_path / "t.jsonl")]

    assert sample(13) == ids
    assert {tuple(sample(s)) for s in range(5)} != {tuple(ids)}


@pytest.mark.parametrize("split", ["train", "dev"])
def test_negatives_are_top_bm25_passages_outside_the_gold_pages(prepared, split):
    out, report = prepared
    store = PassageStore(out / "passages")
    for task in KILT_TASKS:
        queries = read_queries(out / f"{task}-{split}.jsonl")
        pools = {r["id"]: r["negatives"] for r in read_jsonl(negatives_file(out / "negatives", task, split))}
        assert set(pools) == {q.qid for q in queries}
        ranked = search(load_bm25_index(out / "bm25"), [q.text for q in queries], 8)
        for query, rows in zip(queries, ranked):
            assert len(pools[query.qid]) <= 8
            assert not {store.page_ids[store.row(p)] for p in pools[query.qid]} & set(query.gold_pages)
            # empty only where every passage sharing a word with the query is of a gold page
            assert pools[query.qid] == [store.ids[r] for r in rows if r >= 0 and store.page_ids[r] not in query.gold_pages]
        assert report["negatives"][task][split]["empty"] == sum(not p for p in pools.values())
        read_negatives(out / "negatives", task, queries, store, split)
        assert report["negatives"][task][split]["queries"] == len(queries)


def test_negatives_follow_the_bm25_ranking(prepared):
    out, _ = prepared
    store = PassageStore(out / "passages")
    nq0 = next(q for q in read_queries(out / "nq-train.jsonl") if q.qid == "nq0")
    ranked = search(load_bm25_index(out / "bm25"), [nq0.text], 8)[0]
    expected = [store.ids[r] for r in ranked if r >= 0 and store.page_ids[r] != "10"]
    assert len(expected) < 8 and next(r["negatives"] for r in read_jsonl(out / "negatives" / "nq.jsonl") if r["id"] == "nq0") == expected


def test_a_rerun_skips_finished_steps_and_redoes_what_changed(prepared, raw):
    out, first = prepared
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    again = _prepare(raw, out)
    assert again["steps"]["ran"] == [] and len(again["steps"]["skipped"]) == 1 + 8 + 1 + 8
    assert {k: v for k, v in again.items() if k != "steps"} == {k: v for k, v in first.items() if k != "steps"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")} == before
    deeper = _prepare(raw, out, bm25_top_k=9)
    assert deeper["steps"]["ran"] == [f"negatives:{t}" for t in KILT_TASKS]
    reseeded = _prepare(raw, out, seed=14, bm25_top_k=9)  # the seed only matters to the down-sampled tasks
    assert reseeded["steps"]["ran"] == ["task:trex", "task:structured_zeroshot", "negatives:trex", "negatives:structured_zeroshot"]
    (out / "negatives" / "fever.dev.jsonl").unlink()
    assert _prepare(raw, out, seed=14, bm25_top_k=9)["steps"]["ran"] == ["negatives:fever"]
    _prepare(raw, out)  # back to the fixture's settings for the other tests


def test_an_interrupted_step_restarts_cleanly(raw, tmp_path, monkeypatch):
    def interrupted(store, out, **options):
        Path(str(out) + ".tmp").mkdir()
        (out.parent / ".nq-train.jsonl.abc.tmp").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "build_bm25_index", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(raw, tmp_path, tasks=["nq"])
    assert (tmp_path / ".done" / "task-nq.json").is_file() and not (tmp_path / ".done" / "bm25.json").exists()
    monkeypatch.undo()
    report = _prepare(raw, tmp_path, tasks=["nq"])
    assert report["steps"] == {"ran": ["bm25", "negatives:nq"], "skipped": ["passages", "task:nq"]}
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "bm25.tmp").exists()


def test_missing_inputs_fail_naming_the_expected_files(raw, tmp_path, capsys):
    kilt = tmp_path / "kilt"
    kilt_files(kilt)
    (kilt / "fever-dev-kilt.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing input file\(s\):\n  .*fever-dev-kilt.jsonl"):
        pipeline.prepare_kilt(kilt, raw["passages"], tmp_path / "out", triviaqa_questions=[raw["questions"]], show_progress=False)
    code = cli(["prepare", "kilt", "--kilt-dir", str(kilt), "--passages", str(raw["passages"]), "--out", str(tmp_path / "out"),
                "--tasks", "nq,fever"])
    assert code == 2 and str(kilt / "fever-dev-kilt.jsonl") in capsys.readouterr().err
    with pytest.raises(ValueError, match="triviaqa needs --triviaqa-questions"):
        pipeline.prepare_kilt(kilt, raw["passages"], tmp_path / "out", tasks=["triviaqa"], show_progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_prepares_the_named_tasks(raw, tmp_path, capsys):
    code = cli(["prepare", "kilt", "--kilt-dir", str(raw["kilt"]), "--passages", str(raw["passages"]), "--out", str(tmp_path),
                "--tasks", "trex,fever", "--max-train", "trex=2", "--bm25-top-k", "4", "--seed", "3", "--no-progress",
                "--bm25-backend", "numpy"])
    assert code == 0 and "prepared 2 task(s)" in capsys.readouterr().out
    report = json.loads((tmp_path / "prepare_report.json").read_text())
    assert set(report["tasks"]) == {"trex", "fever"} and report["tasks"]["trex"]["train"]["items"] == 2


def test_data_config_kilt_lists_the_prepared_files_and_lengths(prepared):
    out, _ = prepared
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["data=kilt", f"data.root={out}", "paths.output_dir=/tmp/unused"])
    assert list(cfg.data.task_names) == list(KILT_TASKS) and cfg.data.max_passage_length == 160
    assert cfg.data.corpus == "passages" and cfg.data.negatives_dir == f"{out}/negatives"
    assert list(cfg.data.all_passages_positive) == ["aidayago2"]
    for name, task in KILT_TASKS.items():
        spec = cfg.data.tasks[name]
        assert (spec.train, spec.dev) == (task.prepared_file("train"), task.prepared_file("dev"))
    assert {t: (s.prompt, s.max_query_length) for t, s in cfg.data.tasks.items()} == {  # the TACO reference's KILT scripts
        "nq": ("nq", 32), "triviaqa": ("triviaqa", 32), "hotpotqa": ("hotpotqa", 32), "wow": ("wow", 256), "trex": ("trex", 32),
        "fever": ("fever", 64), "structured_zeroshot": ("zsre", 32), "aidayago2": ("aida", 128)}


def test_prepared_folder_trains_indexes_and_evaluates(prepared, tmp_path, tiny_t5_dir):
    out, report = prepared
    cfg = prepared_config(tmp_path / "run", tiny_t5_dir, out, report, KILT_TASKS, "data.all_passages_positive=[aidayago2]")
    results = run(cfg)
    assert set(results) == {*KILT_TASKS, "average"}
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert set(metrics) == set(KILT_TASKS) and all(0 <= m["Rprec"] <= 1 for m in metrics.values())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert any(path.endswith("store.json") for path in manifest["data_sha256"])


def test_held_out_batches_read_the_prepared_dev_negatives_without_an_in_memory_bm25(prepared, tmp_path, tiny_t5_dir,
                                                                                     monkeypatch):
    """What `analyze specialization` measures non-TACO runs on: at KILT scale no BM25 index fits in memory."""
    out, report = prepared
    cfg = prepared_config(tmp_path / "run", tiny_t5_dir, out, report, KILT_TASKS)
    model = instantiate(cfg.model)
    data = instantiate(cfg.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)

    def no_bm25(*args, **kwargs):
        raise AssertionError("an in-memory BM25 index was built")

    monkeypatch.setattr(negatives, "BM25Retriever", no_bm25)
    batches = data.heldout_batches()
    for stream in batches.streams:
        pools = {r["id"]: r["negatives"] for r in read_jsonl(out / "negatives" / f"{stream.task.name}.dev.jsonl")}
        assert stream.queries and all([data.corpus.ids[row] for row in q.negatives] == pools[q.qid] for q in stream.queries)
    assert {task_batch.task for task_batch in batches.batch(0)} == set(KILT_TASKS)
