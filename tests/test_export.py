"""The trained model outside the lab: multiret.Retriever, `multiret export` and `multiret search` on tiny runs.

The Retriever's vectors must be the evaluation stage's (its index shards and guess files), and
an exported model's must be the Retriever's: a MiniLM-shaped BERT through sentence-transformers,
a T5 pooled at its first decoder output, a soft-prompted BERT and a BERT with separate query and
passage encoders through the Hugging Face folder.
"""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import multiret
from multiret.cli import main as cli
from multiret.errors import UserError
from multiret.experiment.retriever import Retriever, find_checkpoint
from multiret.experiment.run import run

from helpers import TINY_TASKS, tiny_config

ATOL = 1e-5


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory, tiny_bert_dir, kilt_dir):
    """A MiniLM-shaped run (mean pooling, normalised, text prompt): trained 2 steps, indexed and evaluated."""
    out = tmp_path_factory.mktemp("bert-run")
    run(tiny_config(out, tiny_bert_dir, kilt_dir, TINY_TASKS, "prompt=text", "trainer.max_steps=2", model="minilm"))
    return out


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory, tiny_t5_dir, kilt_dir):
    """A T5-shaped run (first decoder output, sentinel prompt): trained 2 steps, indexed and evaluated."""
    out = tmp_path_factory.mktemp("t5-run")
    run(tiny_config(out, tiny_t5_dir, kilt_dir, TINY_TASKS, "trainer.max_steps=2"))
    return out


@pytest.fixture(scope="module")
def soft_run(tmp_path_factory, tiny_bert_dir, kilt_dir):
    """A soft-prompted BERT run, trained 2 steps (no index)."""
    out = tmp_path_factory.mktemp("soft-run")
    run(tiny_config(out, tiny_bert_dir, kilt_dir, TINY_TASKS, "prompt=soft", "trainer.max_steps=2", "stages=[train]",
                    model="minilm"))
    return out


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, tiny_bert_dir, kilt_dir):
    """A BERT run with separate query and passage encoders, trained 2 steps (no index)."""
    out = tmp_path_factory.mktemp("split-run")
    run(tiny_config(out, tiny_bert_dir, kilt_dir, TINY_TASKS, "model.shared_encoder=false", "trainer.max_steps=2",
                    "stages=[train]", model="minilm"))
    return out


def dev_queries(kilt_dir, task):
    return [json.loads(line)["input"] for line in (kilt_dir / f"{task}-dev.jsonl").read_text().splitlines()]


def guessed_pages(run_dir, task):
    return [[p["wikipedia_id"] for p in json.loads(line)["output"][0]["provenance"]]
            for line in (run_dir / "eval" / f"{task}-guess.jsonl").read_text().splitlines()]


def corpus_passages(retriever):
    _, corpus = retriever.open_index(next(iter(retriever.tasks)))
    return [(corpus.titles[r], corpus.texts[r]) for r in range(len(corpus))]


@pytest.mark.parametrize("run_fixture", ["bert_run", "t5_run"])
def test_retriever_reproduces_the_evaluation_stage(request, run_fixture, kilt_dir):
    run_dir = request.getfixturevalue(run_fixture)
    retriever = multiret.Retriever.from_run(run_dir)
    indexed = np.load(run_dir / "index" / "shards" / "embeddings-00000-of-00001.npy")
    np.testing.assert_allclose(retriever.encode_passages(corpus_passages(retriever)), indexed, atol=ATOL)
    for task in ("qa", "el"):
        hits = retriever.search(dev_queries(kilt_dir, task), task, k=5)
        assert [[h.page_id for h in found] for found in hits] == [pages[:5] for pages in guessed_pages(run_dir, task)]
        assert [h.rank for h in hits[0]] == [1, 2, 3, 4, 5] and hits[0][0].score >= hits[0][-1].score
        assert hits[0][0].title == f"Page {hits[0][0].page_id}"


def test_sentence_transformers_export_encodes_as_the_run(bert_run, kilt_dir, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "st"
    assert cli(["export", str(bert_run), "--out", str(out)]) == 0
    assert "checkpoints/best.ckpt →" in capsys.readouterr().out  # --checkpoint best: the run's best validation step
    for config in out.rglob("*.json"):
        assert "multiret" not in config.read_text(), config  # nothing in the folder needs multiret to load
    model = SentenceTransformer(str(out), device="cpu")
    retriever = Retriever.from_run(bert_run)
    for task, spec in TINY_TASKS.items():
        queries = dev_queries(kilt_dir, task)
        exported = model.encode(queries, prompt_name=task, processing_kwargs={"text": {"max_length": spec["max_query_length"]}})
        np.testing.assert_allclose(exported, retriever.encode_queries(queries, task), atol=ATOL)
    passages = corpus_passages(retriever)
    exported = model.encode(retriever.passage_texts(passages))
    np.testing.assert_allclose(exported, np.load(bert_run / "index" / "shards" / "embeddings-00000-of-00001.npy"), atol=ATOL)
    card = (out / "README.md").read_text()
    scores = json.loads((bert_run / "eval" / "metrics.json").read_text())
    best_step = json.loads((bert_run / "manifest.json").read_text())["evaluated_weights"]["step"]  # the exported weights'
    for expected in ("gradient method: naive", f"optimizer steps: {best_step}", "Title: {title} Text: {text}", "prompt_name='qa'",
                     "| qa |", "'QA: '",
                     f"{scores['el']['Rprec']:.4f}"):
        assert expected in card


@pytest.mark.parametrize("run_fixture", ["t5_run", "soft_run", "split_run"])
def test_what_sentence_transformers_cannot_express_exports_as_hugging_face(request, run_fixture, kilt_dir, tmp_path, capsys):
    run_dir = request.getfixturevalue(run_fixture)
    out = tmp_path / "hf"
    capsys.readouterr()  # what building the run printed
    assert cli(["export", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("multiret export:")]
    assert "wrote a Hugging Face folder instead" in line and "Retriever.from_export" in line
    assert (out / "config.json").is_file() and (out / "multiret.json").is_file()
    exported, original = Retriever.from_export(out), Retriever.from_run(run_dir, "last")  # the weights exported
    for task in ("qa", "el"):
        queries = dev_queries(kilt_dir, task)
        np.testing.assert_allclose(exported.encode_queries(queries, task), original.encode_queries(queries, task), atol=ATOL)
    passages = [("Page 3", "w1 w2 w3"), ("Page 4", "w5 w7")]
    np.testing.assert_allclose(exported.encode_passages(passages), original.encode_passages(passages), atol=ATOL)
    assert "Retriever.from_export" in (out / "README.md").read_text()


def test_search_command_answers_arguments_and_standard_input(bert_run, kilt_dir, monkeypatch, capsys):
    query = dev_queries(kilt_dir, "qa")[0]
    assert cli(["search", str(bert_run), "--task", "qa", "-k", "3", query]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"# {query}" and len(lines) == 4
    rank, score, title, page = lines[1].split("\t")
    assert rank == "1" and title == f"Page {page}" and float(score) == pytest.approx(
        Retriever.from_run(bert_run).search([query], "qa", 1)[0][0].score, abs=1e-4)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{query}\n\n{dev_queries(kilt_dir, 'qa')[1]}\n"))
    assert cli(["search", str(bert_run), "--task", "qa", "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["query"] for a in answers] == [query, dev_queries(kilt_dir, "qa")[1]]
    assert len(answers[0]["hits"]) == 10 and set(answers[0]["hits"][0]) == {"rank", "score", "page_id", "title", "passage_id"}


def test_bad_input_is_one_line_with_the_fix(bert_run, t5_run, soft_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli(["search", str(bert_run), "--task", "nq", "a query"]) == 2
    assert "unknown task 'nq'; this model was trained on: qa, el" in capsys.readouterr().err
    assert cli(["search", str(soft_run), "--task", "qa", "a query"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("multiret search:")]
    assert "has no index" in line and "multiret index" in line and f"ckpt_path={soft_run}/checkpoints/last.ckpt" in line
    foreign = bert_run / "checkpoints" / "foreign.ckpt"
    shutil.copy(t5_run / "checkpoints" / "last.ckpt", foreign)
    try:
        assert cli(["export", str(foreign), "--out", str(tmp_path / "x")]) == 2
    finally:
        foreign.unlink()
    assert "holds a model of another shape" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("keep me")
    assert cli(["export", str(bert_run), "--out", str(tmp_path / "project")]) == 2
    assert "is not an earlier export" in capsys.readouterr().err and (tmp_path / "project" / "notes.txt").is_file()
    with pytest.raises(UserError, match="is not a run folder"):
        find_checkpoint(tmp_path)


def test_checkpoint_choices_best_last_and_the_indexed_one(bert_run, tmp_path):
    folder = bert_run / "checkpoints"
    assert find_checkpoint(bert_run, "best").path == folder / "best.ckpt"  # validation kept one
    assert find_checkpoint(bert_run, "last").path == folder / "last.ckpt"
    indexed = json.loads((bert_run / "manifest.json").read_text())["evaluated_weights"]["checkpoint"]
    assert find_checkpoint(bert_run).path == folder / f"{indexed}.ckpt"  # the default: the weights the index was built with
    copy = tmp_path / "run"
    shutil.copytree(bert_run, copy, ignore=shutil.ignore_patterns("best.ckpt", "index", "manifest.json"))
    found = find_checkpoint(copy, "best")
    assert found.path == copy / "checkpoints" / "last.ckpt" and "no checkpoints/best.ckpt" in found.note
    assert find_checkpoint(copy).path.name == "last.ckpt"  # no record of the index's weights: last


@pytest.mark.slow
def test_sentence_transformers_export_loads_where_multiret_cannot_be_imported(bert_run, tmp_path):
    out = tmp_path / "st"
    assert cli(["export", str(bert_run), "--out", str(out)]) == 0
    expected = Retriever.from_run(bert_run).encode_queries(["w1 w2 w3"], "qa")
    script = ("import sys, json; sys.modules['multiret'] = None\n"  # any import of multiret now fails
              "from sentence_transformers import SentenceTransformer\n"
              f"model = SentenceTransformer({str(out)!r}, device='cpu')\n"
              "print(json.dumps(model.encode(['w1 w2 w3'], prompt_name='qa').tolist()))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.array(json.loads(done.stdout.splitlines()[-1])), expected, atol=ATOL)


def test_search_benchmark_times_each_part_of_a_search(bert_run, kilt_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import search_first_answer

    times = search_first_answer.parts_seconds(str(bert_run), "qa", dev_queries(kilt_dir, "qa")[0])
    assert set(times) == {"load_model", "open_corpus_and_index", "first_search", "second_search"}
    assert all(seconds > 0 for seconds in times.values())
