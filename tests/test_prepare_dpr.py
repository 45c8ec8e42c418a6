"""`multiret prepare dpr`: the reference's multikilt DPR files (gzip and plain, int and string psg_id) → a folder data=kilt trains on."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import AutoTokenizer

from multiret.cli import main as cli
from multiret.data.batches import MultitaskBatches, TaskStream
from multiret.data.collator import PromptCollator
from multiret.data.corpus import read_corpus
from multiret.data.jsonl import DataFormatError, read_jsonl, write_jsonl
from multiret.data.kilt import Query
from multiret.data.tasks import TaskSpec
from multiret.errors import UserError
from multiret.experiment.run import CONFIG_DIR, run
from multiret.prepare import dpr

from helpers import PAGES, kilt_item, page_query, page_words, prepared_config

TASKS = ["nq", "trex", "fever", "aidayago2"]
AIDA_DOC = " ".join(f"L{i}" for i in range(100)) + f" [START_ENT] {page_query(15, 2)} [END_ENT] " + " ".join(f"R{i}" for i in range(30))


def psg(page: int, j: int) -> int:
    """The fixture's passage ids are KILT's: integers, 1 + row."""
    return 3 * (page - 10) + j + 1


def passages_tsv(path: Path) -> Path:
    """KILT's 6-column passage split with its header: three passages per page of PAGES."""
    rows = ["id\ttext\twikipedia_title\twikipedia_id\tstart_paragraph_id\tend_paragraph_id"]
    for page in PAGES:
        words = page_words(page)
        rows += [f"{psg(page, j)}\t{' '.join(words[5 * j:5 * j + 5])}\tPage {page}\t{page}\t{j}\t{j}" for j in range(3)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def ctx(page: int, j: int, as_str: bool = False) -> dict:
    pid = psg(page, j)
    return {"title": f"Page {page}", "text": "...", "score": 1.5, "psg_id": str(pid) if as_str else pid}


def item(question: str, positives: list[tuple[int, int]], negatives: list[tuple[int, int]], as_str: bool = False) -> dict:
    return {"question": question, "answers": ["x"], "positive_ctxs": [ctx(*p, as_str) for p in positives],
            "negative_ctxs": [ctx(19, 2, as_str)], "hard_negative_ctxs": [ctx(*n, as_str) for n in negatives]}


def write_items(path: Path, items: list[dict]) -> Path:
    data = json.dumps(items).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


TRAIN = {
    "nq": [item(page_query(10), [(10, 0)], [(11, 0), (12, 1)]),  # kept
           item(page_query(11), [], [(11, 0)]),  # dropped: no positive
           item(page_query(12), [(12, 2)], []),  # dropped: no hard negative
           item(page_query(13), [(13, 1), (14, 0)], [(15, 0)])],  # kept, two gold pages
    "trex": [item(f"{page_words(10 + i)[0]} [SEP] w{i}", [(10 + i, 0)], [(19 - i, 0)], as_str=True) for i in range(8)],
    "fever": [item(f"{page_query(19)} is a claim .", [(19, 1)], [(10, 2), (11, 2)], as_str=True)],
    "aidayago2": [item(AIDA_DOC, [(15, 1)], [(16, 0)])],
}
FILES = {"nq": "nq-{}-multikilt.json.gz", "trex": "trex-{}-multikilt.json", "fever": "fever-{}-multikilt.json",
         "aidayago2": "aidayago2-{}-multikilt.json.gz"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dpr-raw")
    (root / "files").mkdir()
    for task, items in TRAIN.items():
        write_items(root / "files" / FILES[task].format("train"), items)
        write_items(root / "files" / FILES[task].format("dev"), items[:2])
    kilt_dev = root / "kilt-dev"
    kilt_dev.mkdir()
    write_jsonl(kilt_dev / "nq-dev-kilt.jsonl", [kilt_item("nq-d0", page_query(10), [10])])
    write_jsonl(kilt_dev / "fever-dev-kilt.jsonl", [kilt_item("fever-d0", page_query(19), [19])])
    write_jsonl(kilt_dev / "aida-dev-kilt.jsonl", [kilt_item("aida-d0", AIDA_DOC, [15])])  # the reference's rename
    write_jsonl(kilt_dev / "trex-dev-kilt.jsonl", [kilt_item("trex-d0", "w1 [SEP] w2", [11])])
    write_items(root / "files" / "triviaqa-train-multikilt.json", [item(page_query(14), [(14, 0)], [(15, 0)])])
    write_jsonl(kilt_dev / "tqa-dev-kilt.jsonl", [kilt_item("tqa-d0", page_query(14), [14])])  # the reference's: questions joined in
    write_jsonl(kilt_dev / "triviaqa-dev_id-kilt.jsonl", [kilt_item("tqa-d0", None, [14])])  # KILT's: ids only
    return {"files": root / "files", "passages": passages_tsv(root / "psgs_w100.tsv"), "kilt_dev": kilt_dev}


def _prepare(raw: dict, out: Path, **options) -> dict:
    options.setdefault("tasks", TASKS)
    options.setdefault("max_train", {})
    return dpr.prepare_dpr(raw["files"], raw["passages"], out, show_progress=False, **options)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dpr-prepared")
    return out, _prepare(raw, out)


def _by_id(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(path)}


def test_items_become_queries_with_gold_pages_given_positives_and_given_negatives(prepared):
    out, _ = prepared
    nq = _by_id(out / "nq-train.jsonl")
    assert list(nq) == ["0", "3"] and nq["0"]["input"] == page_query(10)
    assert nq["3"]["output"] == [{"provenance": [{"wikipedia_id": "13", "title": "Page 13"}, {"wikipedia_id": "14", "title": "Page 14"}]}]
    positives, negatives = _by_id(out / "positives" / "nq.jsonl"), _by_id(out / "negatives" / "nq.jsonl")
    assert positives["3"]["positives"] == [str(psg(13, 1)), str(psg(14, 0))]
    assert negatives["0"]["negatives"] == [str(psg(11, 0)), str(psg(12, 1))]
    fever = _by_id(out / "negatives" / "fever.jsonl")  # string psg_ids read as the int ones
    assert fever["0"]["negatives"] == [str(psg(10, 2)), str(psg(11, 2))]
    assert not (out / "bm25").exists()


def test_report_counts_the_reference_filters_and_says_negatives_are_given(prepared):
    out, report = prepared
    assert json.loads((out / "prepare_report.json").read_text()) == report
    assert report["negatives"] == "given" and report["prepared_tasks"] == TASKS
    assert report["tasks"]["nq"]["train"] == {"items": 4, "kept": 2, "dropped_no_positive": 1, "dropped_few_negatives": 1, "read": 4}
    assert report["tasks"]["nq"]["dev"] == {"items": 2, "kept": 1, "dropped_no_positive": 1, "dropped_few_negatives": 0, "read": 2}
    assert report["tasks"]["trex"]["train"]["kept"] == 8 and report["passages"]["passages"] == 30


def test_aida_positives_are_every_passage_of_the_page_and_the_query_the_left_window(prepared):
    out, _ = prepared
    assert _by_id(out / "positives" / "aidayago2.jsonl")["0"]["positives"] == [str(psg(15, j)) for j in range(3)]
    text = _by_id(out / "aidayago2-train.jsonl")["0"]["input"]
    assert text.split()[:2] == ["L36", "L37"] and text.endswith("R29") and "[START_ENT]" in text


def test_down_sampling_and_holdout_follow_the_reference(raw, tmp_path):
    report = _prepare(raw, tmp_path, tasks=["trex"], max_train={"trex": 5}, holdout=2)
    random.seed(42)
    sampled = random.sample(list(range(8)), 5)  # the reference: random.seed(42); random.sample(items, 100000)
    train, val = _by_id(tmp_path / "trex-train.jsonl"), _by_id(tmp_path / "trex-val.jsonl")
    assert sorted(val) == sorted(map(str, sampled[-2:])) and sorted(train) == sorted(map(str, sampled[:-2]))
    assert set(_by_id(tmp_path / "negatives" / "trex.val.jsonl")) == set(val)
    assert report["tasks"]["trex"]["train"]["read"] == 8 and report["tasks"]["trex"]["val"]["kept"] == 2


def test_kilt_dev_files_are_the_dev_split_under_kilt_or_reference_names(raw, tmp_path):
    report = _prepare(raw, tmp_path, tasks=["nq", "aidayago2", "triviaqa"], kilt_dev=raw["kilt_dev"])
    assert [r["id"] for r in read_jsonl(tmp_path / "aidayago2-dev.jsonl")] == ["aida-d0"]
    assert [r["input"] for r in read_jsonl(tmp_path / "triviaqa-dev.jsonl")] == [page_query(14)]
    assert [r["id"] for r in read_jsonl(tmp_path / "nq-dev.jsonl")] == ["nq-d0"]
    assert report["tasks"]["nq"]["dev"]["items"] == 1 and not (tmp_path / "negatives" / "nq.dev.jsonl").exists()


def test_kilts_id_only_triviaqa_dev_file_needs_the_questions(raw, tmp_path):
    kilt_dev = tmp_path / "kilt-dev"
    kilt_dev.mkdir()
    (kilt_dev / "triviaqa-dev_id-kilt.jsonl").write_bytes((raw["kilt_dev"] / "triviaqa-dev_id-kilt.jsonl").read_bytes())
    with pytest.raises(UserError, match="holds TriviaQA ids only: pass --triviaqa-questions"):
        _prepare(raw, tmp_path / "out", tasks=["triviaqa"], kilt_dev=kilt_dev)
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"Data": [{"QuestionId": "tqa-d0", "Question": "the question"}]}), encoding="utf-8")
    _prepare(raw, tmp_path / "out", tasks=["triviaqa"], kilt_dev=kilt_dev, triviaqa_questions=[questions])
    assert [r["input"] for r in read_jsonl(tmp_path / "out" / "triviaqa-dev.jsonl")] == ["the question"]


def test_a_rerun_skips_finished_steps_and_redoes_what_changed(prepared, raw):
    out, _ = prepared
    again = _prepare(raw, out)
    assert again["steps"] == {"ran": [], "skipped": ["passages", *(f"task:{t}" for t in TASKS)]}
    stricter = _prepare(raw, out, min_negatives=2)
    assert stricter["steps"]["ran"] == [f"task:{t}" for t in TASKS] and stricter["tasks"]["nq"]["train"]["kept"] == 1
    _prepare(raw, out)  # back to the fixture's settings


def test_an_interrupted_run_leaves_no_half_file_and_resumes(raw, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dpr._Converter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(raw, tmp_path, tasks=["nq"])
    assert not (tmp_path / "nq-train.jsonl").exists() and not list(tmp_path.rglob("*.tmp*"))
    monkeypatch.undo()
    assert _prepare(raw, tmp_path, tasks=["nq"])["steps"] == {"ran": ["task:nq"], "skipped": ["passages"]}


@pytest.mark.parametrize("fault,message", [
    ("missing", r"nq-train-multikilt.json.gz: item 1: psg_id '999' is not in the passage file"),
    ("truncated", r"nq-train-multikilt.json.gz: item \d+: the gzip stream is cut short"),
    ("malformed", r"nq-train-multikilt.json: item 1: invalid JSON"),
    ("unclosed", r"nq-train-multikilt.json: item 2: the JSON ends before the array closes"),
    ("jsonl", r"nq-train-multikilt.json: expected one JSON array of DPR items"),
    ("no_question", r"nq-train-multikilt.json: item 0: expected an object with a string 'question'"),
])
def test_bad_files_fail_in_one_line_naming_file_and_item_and_write_nothing(raw, tmp_path, capsys, fault, message):
    files = tmp_path / "files"
    files.mkdir()
    items = [item(page_query(10), [(10, 0)], [(11, 0)]), item(page_query(11), [(11, 0)], [(12, 0)])]
    good = json.dumps(items)
    name = "nq-train-multikilt.json.gz" if fault in ("missing", "truncated") else "nq-train-multikilt.json"
    if fault == "missing":
        items[1]["hard_negative_ctxs"][0]["psg_id"] = 999
        write_items(files / name, items)
    elif fault == "truncated":
        (files / name).write_bytes(gzip.compress(good.encode() * 50)[:-40])
    else:
        text = {"malformed": good.replace('{"question": "' + page_query(11), '{"question": ' + page_query(11)),
                "unclosed": good[:-1] + ", ", "jsonl": "\n".join(json.dumps(i) for i in items),
                "no_question": json.dumps([{"query": "q"}])}[fault]
        (files / name).write_text(text, encoding="utf-8")
    write_items(files / "nq-dev-multikilt.json", items[:1])
    out = tmp_path / "out"
    with pytest.raises(DataFormatError, match=message):
        dpr.prepare_dpr(files, raw["passages"], out, tasks=["nq"], show_progress=False)
    code = cli(["prepare", "dpr", "--files", str(files), "--passages", str(raw["passages"]), "--out", str(out), "--tasks", "nq",
                "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and name in err
    assert not (out / "nq-train.jsonl").exists() and not (out / "prepare_report.json").exists() and not list(out.rglob("*.tmp*"))


def test_missing_files_are_named_at_once(raw, tmp_path, capsys):
    code = cli(["prepare", "dpr", "--files", str(raw["files"]), "--passages", str(raw["passages"]), "--out", str(tmp_path / "o"),
                "--tasks", "nq,hotpotqa,structured_zeroshot"])
    err = capsys.readouterr().err
    assert code == 2 and "hotpotqa-train-multikilt.json.gz" in err and "zeroshot-dev-multikilt.json.gz" in err


def test_data_kilt_reads_the_folder_with_its_given_positives(prepared):
    out, _ = prepared
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["data=kilt", f"data.root={out}", "paths.output_dir=/tmp/unused"])
    assert list(cfg.data.task_names) == TASKS and cfg.data.positives_dir == f"{out}/positives"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        ref = compose("train", overrides=["experiment=kilt_reference", f"data.root={out}", "paths.output_dir=/tmp/unused"])
    assert (ref.data.positive_rule, ref.data.negative_rule, ref.data.query_sep_to_eos) == ("first", "first", True)
    assert ref.data.tasks.trex.prompt == "TREX" and ref.data.tasks.trex.max_query_length == 36


def test_prepared_folder_trains_on_the_given_positives_and_evaluates(prepared, tmp_path, tiny_t5_dir):
    out, report = prepared
    cfg = prepared_config(tmp_path / "run", tiny_t5_dir, out, report, TASKS, f"data.positives_dir={out / 'positives'}",
                          "data.positive_rule=first", "data.negative_rule=first", "data.query_sep_to_eos=true")
    model = instantiate(cfg.model)
    data = instantiate(cfg.data, tokenizer=model.tokenizer, prompt_template=model.prompt_template)
    data.setup("fit")
    corpus = data.corpus
    assert [corpus.ids[r] for r in data.train_queries["nq"][1].positives] == [str(psg(13, 1)), str(psg(14, 0))]
    results = run(cfg)
    assert set(results) == {*TASKS, "average"}


def test_first_rules_take_the_first_positive_and_negatives(tiny_t5_dir, tmp_path):
    corpus = read_corpus(passages_tsv(tmp_path / "p.tsv"))
    model_tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    collator = PromptCollator(model_tokenizer, "{prompt} {query}", 16, sep_to_eos=True)
    task = TaskSpec("trex", None, None, prompt="TREX")
    assert collator.format_query("w1 [SEP] w2", task) == f"TREX w1 {model_tokenizer.eos_token} w2"
    ids = collator.queries(["w1 [SEP] w2"], task)["input_ids"][0].tolist()
    assert ids.count(model_tokenizer.eos_token_id) == 2  # the [SEP] and the end: one token, not the text "</s>"
    query = Query("q", "w1", ["10"], positives=[5, 1, 2], negatives=[20, 21, 22, 23])
    batches = MultitaskBatches([TaskStream(task, [query], 1)], corpus, collator, 2, seed=0, first_positive=True, first_negatives=True)
    texts = []
    collator.passages = lambda passages: texts.extend(passages)  # type: ignore[method-assign]
    for step in range(3):
        batches.batch(step)
    assert texts == [corpus.passage_text(r) for r in (5, 20, 21)] * 3


def test_benchmark_reports_items_per_second_and_memory_per_size(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "prepare_dpr.py"
    done = subprocess.run([sys.executable, str(script), "--items", "200,400", "--passages", "1000", "--out", str(tmp_path / "b.json")],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(script.parents[1])})
    result = json.loads((tmp_path / "b.json").read_text())
    assert json.loads(done.stdout) == result and [r["items"] for r in result["runs"]] == [200, 400]
    assert all(r["kept"] == r["items"] and r["items_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in result["runs"])
