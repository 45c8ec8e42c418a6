"""Data stage: clear errors on bad input, counted skips, temperature mixing, deterministic resumable batches."""

import json
import logging
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from multiret.data.batches import MultitaskBatches, TaskStream
from multiret.data.collator import PromptCollator
from multiret.data.corpus import read_corpus, select_pages, subsample_pages
from multiret.data.datamodule import MultitaskDataModule
from multiret.data.jsonl import DataFormatError
from multiret.data.kilt import attach_positives, read_queries
from multiret.data.mixing import task_batch_sizes, temperature_rates
from multiret.data.negatives import drop_gold_pages
from multiret.data.tasks import select_tasks
from multiret.index.bm25 import BM25Retriever
from multiret.prepare.negatives import bm25_negatives


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "nq-train.jsonl"
    path.write_text('{"id": "a", "input": "q", "output": []}\n\n{"id": "b", "input": \n')
    with pytest.raises(DataFormatError, match=r"nq-train.jsonl:3: invalid JSON"):
        read_queries(path)


def test_record_without_input_names_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "input": "q", "output": []}\n{"id": "b", "output": []}\n')
    with pytest.raises(DataFormatError, match=r"t.jsonl:2: expected an object with 'id' and a string 'input'"):
        read_queries(path)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task\(s\) 'nq'.*known tasks: el, qa"):
        select_tasks({"qa": {"train": "a", "dev": "b"}, "el": {"train": "c", "dev": "d"}}, ["qa", "nq"])


def test_items_without_provenance_are_skipped_and_counted_in_one_line(tmp_path, kilt_dir, caplog):
    corpus = read_corpus(kilt_dir / "corpus.tsv")
    path = tmp_path / "t.jsonl"
    records = [
        {"id": "1", "input": "q", "output": [{"answer": "x", "provenance": [{"wikipedia_id": "3"}]}]},
        {"id": "2", "input": "q", "output": [{"answer": "answer only"}]},
        {"id": "3", "input": "q", "output": [{"answer": "x", "provenance": [{"wikipedia_id": "999"}]}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level(logging.WARNING):
        kept = attach_positives("qa", read_queries(path), corpus)
    assert [q.qid for q in kept] == ["1"]
    assert kept[0].positives == [corpus.row("3_0")]  # the lead passage of the gold page
    assert [r.getMessage() for r in caplog.records] == [
        "task qa: skipped 2 of 3 training items (1 without provenance, 1 whose gold pages are not in the corpus)"
    ]


def test_corpus_row_with_wrong_field_count_names_file_and_line(tmp_path):
    path = tmp_path / "psgs.tsv"
    path.write_text("id\ttext\ttitle\twikipedia_id\n1_0\thello\tHello\t1\n2_0\tonly three\t2\n")
    with pytest.raises(DataFormatError, match=r"psgs.tsv:3: expected 4 tab-separated fields, got 3"):
        read_corpus(path)


def test_subsample_keeps_every_required_page(kilt_dir):
    corpus = read_corpus(kilt_dir / "corpus.tsv")
    small = subsample_pages(corpus, ["5", "7"], max_pages=4, seed=1)
    pages = set(small.page_ids)
    assert {"5", "7"} <= pages and len(pages) == 4
    assert set(subsample_pages(corpus, ["5", "7"], max_pages=4, seed=1).page_ids) == pages


def test_a_sub_corpus_is_the_same_whichever_offered_tasks_are_trained(kilt_dir, kilt_tasks):
    """One model per task must search the pages a multitask model of the same seed searches (the study compares them)."""
    def pages(task_names):
        module = MultitaskDataModule(str(kilt_dir), "corpus.tsv", kilt_tasks, task_names, max_train_queries=4,
                                     max_eval_queries=2, corpus_max_pages=12, seed=5, negatives_miner=None)
        module.setup("evaluate")
        return set(module.corpus.page_ids), module

    both, multitask = pages(["qa", "el"])
    only_qa, single = pages(["qa"])
    el_gold = {p for qs in (multitask.train_queries["el"], multitask.eval_queries["el"]) for q in qs for p in q.gold_pages}
    assert only_qa == both and el_gold <= only_qa and len(both) == 12
    assert set(single.eval_queries) == {"qa"}
    assert (kilt_dir / "el-train.jsonl") in single.data_files()  # read for its gold pages: in the run's manifest


def test_temperature_mixing_by_hand():
    # sizes 900 and 100: proportional rates are 0.9/0.1; temperature 2 gives 0.75/0.25 (√0.9 : √0.1 = 3 : 1)
    assert temperature_rates([900, 100], 2.0) == pytest.approx([0.75, 0.25])
    # 10 queries: one each, the 8 spare split 6 / 2
    assert task_batch_sizes(10, [900, 100], 2.0) == [7, 3]
    assert task_batch_sizes(3, [10**6, 1, 1], 1.0) == [1, 1, 1]
    assert sum(task_batch_sizes(24, [5, 70, 300], 4.0)) == 24
    with pytest.raises(ValueError, match="smaller than the number of tasks"):
        task_batch_sizes(2, [5, 5, 5])


def _stream(kilt_dir, tiny_t5_dir, kilt_tasks, start_step=0, micro_batches=1):
    corpus = read_corpus(kilt_dir / "corpus.tsv")
    tasks = select_tasks({k: {**v, "train": str(kilt_dir / v["train"]), "dev": None} for k, v in kilt_tasks.items()}, ["qa", "el"])
    streams = []
    for task, size in zip(tasks, (3, 2)):
        queries = attach_positives(task.name, read_queries(task.train), corpus)
        for q in queries:
            q.negatives = [0, 1, 2]
        streams.append(TaskStream(task, queries, size))
    collator = PromptCollator(AutoTokenizer.from_pretrained(tiny_t5_dir), "{prompt} <extra_id_1> {query}", 16)
    return MultitaskBatches(streams, corpus, collator, n_negatives=2, seed=7, start_step=start_step, micro_batches=micro_batches)


def test_every_batch_holds_every_task_and_resuming_replays_the_same_batches(kilt_dir, tiny_t5_dir, kilt_tasks):
    stream = iter(_stream(kilt_dir, tiny_t5_dir, kilt_tasks))
    batches = [next(stream)[0] for _ in range(30)]  # 30 steps × 3 queries cycles the 40 qa items twice
    for batch in batches:
        assert [task_batch.task for task_batch in batch] == ["qa", "el"]
        qa, el = batch
        assert qa.query["input_ids"].shape[0] == 3
        assert qa.passage["input_ids"].shape[0] == 3 * 3  # positive + 2 negatives per query
        assert el.query["input_ids"].shape[0] == 2
    resumed = iter(_stream(kilt_dir, tiny_t5_dir, kilt_tasks, start_step=17))
    for step in range(17, 30):
        [again] = next(resumed)
        for task in (0, 1):
            for side in ("query", "passage"):
                assert getattr(again[task], side)["input_ids"].equal(getattr(batches[step][task], side)["input_ids"])


def test_micro_batches_are_consecutive_stream_batches_and_resume_by_optimizer_step(kilt_dir, tiny_t5_dir, kilt_tasks):
    single = _stream(kilt_dir, tiny_t5_dir, kilt_tasks)
    resumed = iter(_stream(kilt_dir, tiny_t5_dir, kilt_tasks, start_step=3, micro_batches=2))
    step_three = next(resumed)
    assert len(step_three) == 2
    for micro, expected in zip(step_three, (single.batch(6), single.batch(7))):
        assert micro[1].query["input_ids"].equal(expected[1].query["input_ids"])


def test_infinite_temperature_mixes_uniformly():
    assert task_batch_sizes(9, [10**6, 10, 1000], float("inf")) == [3, 3, 3]


def test_negatives_round_trip_by_passage_id_through_a_subsampled_corpus(tmp_path, kilt_dir, caplog):
    from multiret.data.negatives import read_negatives, write_negatives

    corpus = read_corpus(kilt_dir / "corpus.tsv")
    queries = read_queries(kilt_dir / "qa-train.jsonl")[:3]
    for i, query in enumerate(queries):
        query.negatives = [corpus.row(f"{30 + i}_0"), corpus.row(f"{30 + i}_1")]
    write_negatives(tmp_path, "qa", queries, corpus)
    small = select_pages(corpus, ["30", "31", "32"][:2])  # page 32's passages are gone
    fresh = read_queries(kilt_dir / "qa-train.jsonl")[:3]
    with caplog.at_level(logging.WARNING):
        read_negatives(tmp_path, "qa", fresh, small)
    assert [[small.ids[r] for r in q.negatives] for q in fresh] == [["30_0", "30_1"], ["31_0", "31_1"], []]
    assert "2 negatives" in caplog.text
    with pytest.raises(DataFormatError, match="qa-train-3"):
        read_negatives(tmp_path, "qa", read_queries(kilt_dir / "qa-train.jsonl")[:4], corpus)


def test_the_gold_page_rule_keeps_order_and_drops_gold_pages_padding_and_nothing_else(kilt_dir):
    corpus = read_corpus(kilt_dir / "corpus.tsv")
    rows = [corpus.row("3_1"), -1, corpus.row("7_0"), corpus.row("3_0"), corpus.row("9_1"), corpus.row("7_1")]
    kept = drop_gold_pages(corpus, ["7", "3", "999"], rows)
    assert kept.tolist() == [corpus.row("9_1")]
    assert drop_gold_pages(corpus, [], rows).tolist() == [r for r in rows if r >= 0]


def test_bm25_negatives_are_the_top_hits_outside_the_gold_pages(kilt_dir):
    """The injected miner gives each query the pool it got when the data module ran BM25 itself."""
    corpus = read_corpus(kilt_dir / "corpus.tsv")
    queries = {task: read_queries(kilt_dir / f"{task}-train.jsonl") for task in ("qa", "el")}
    bm25_negatives(corpus, queries, 6)
    retriever = BM25Retriever(corpus, show_progress=False)
    for task_queries in queries.values():
        ranked = retriever.search([q.text for q in task_queries], 6)
        assert [q.negatives for q in task_queries] == [
            [int(r) for r in rows if corpus.page_ids[int(r)] not in q.gold_pages] for q, rows in zip(task_queries, ranked)]
        assert any(len(q.negatives) < 6 for q in task_queries)  # gold passages were in the top 6 and left out


def test_the_data_package_imports_nothing_of_prepare():
    """data/ only reads: the writers of prepare/ may import it, never the other way round."""
    code = ("import pkgutil, importlib, sys, multiret.data as d\n"
            "[importlib.import_module(f'multiret.data.{m.name}') for m in pkgutil.iter_modules(d.__path__)]\n"
            "print(sorted(m for m in sys.modules if m.startswith('multiret.prepare')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
