"""BEIR- and MS MARCO-layout datasets: readers, their errors, IR measures against ir-measures and by hand, per-task
corpora in training batches, and a tiny train → index → evaluate run over two datasets (zero-shot and BM25 too)."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import ir_measures
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from multiret.cli import main as cli
from multiret.data import beir, jsonl
from multiret.data.beir import STORE_FOLDER, read_dataset_corpus, read_split
from multiret.data.beir_datamodule import BeirDataModule
from multiret.data.jsonl import DataFormatError, write_jsonl
from multiret.data.store import is_passage_store
from multiret.errors import UserError
from multiret.eval.ir_metrics import MEASURES, ir_scores, ranking_run, write_run
from multiret.experiment.run import CONFIG_DIR, objective, run
from multiret.prepare.negatives import bm25_negatives

from helpers import TRAINER, WORDS

DOCS = 16  # documents per dataset


def _doc_words(dataset: int, doc: int) -> list[str]:
    return random.Random(1000 * dataset + doc).sample(WORDS, 8)


def _judgements(dataset: int, split: str) -> list[tuple[str, str, int]]:
    """Query q<i> quotes words of document d<i> (grade 2); the next document is partly relevant (1), the one after judged 0."""
    queries = range(DOCS) if split == "train" else range(0, DOCS, 2)
    return [(f"q{i}", f"d{(i + shift) % DOCS}", grade) for i in queries for shift, grade in ((0, 2), (1, 1), (2, 0))]


def _query_text(dataset: int, i: int) -> str:
    return " ".join(random.Random(i).sample(_doc_words(dataset, i), 3))


def write_beir(folder: Path, dataset: int = 0, splits: tuple[str, ...] = ("train", "dev")) -> Path:
    """A BEIR-layout dataset: corpus.jsonl, queries.jsonl, qrels/<split>.tsv with its header line."""
    (folder / "qrels").mkdir(parents=True)
    words = [_doc_words(dataset, d) for d in range(DOCS)]
    write_jsonl(folder / "corpus.jsonl", ({"_id": f"d{d}", "title": " ".join(w[:2]), "text": " ".join(w[2:])}
                                          for d, w in enumerate(words)))
    write_jsonl(folder / "queries.jsonl", ({"_id": f"q{i}", "text": _query_text(dataset, i)} for i in range(DOCS)))
    for split in splits:
        lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{g}" for q, d, g in _judgements(dataset, split))]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_msmarco(folder: Path, dataset: int = 1, splits: tuple[str, ...] = ("train", "dev")) -> Path:
    """An MS MARCO passage-layout dataset: collection.tsv, queries.<split>.tsv, TREC qrels.<split>.tsv."""
    folder.mkdir(parents=True)
    (folder / "collection.tsv").write_text("".join(f"{d}\t{' '.join(_doc_words(dataset, d))}\n" for d in range(DOCS)))
    for split in splits:
        judged = _judgements(dataset, split)
        qids = dict.fromkeys(q for q, _, _ in judged)
        (folder / f"queries.{split}.tsv").write_text("".join(f"{q[1:]}\t{_query_text(dataset, int(q[1:]))}\n" for q in qids))
        (folder / f"qrels.{split}.tsv").write_text("".join(f"{q[1:]}\t0\t{d[1:]}\t{g}\n" for q, d, g in judged))
    return folder


@pytest.fixture(scope="module")
def beir_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("beir")
    write_beir(root / "sci")
    write_msmarco(root / "marco")
    return root


def test_both_layouts_read_graded_judgements(beir_root):
    sci = read_dataset_corpus(beir_root / "sci")
    assert len(sci) == DOCS and sci.page_ids == sci.ids and sci.titles[0] == " ".join(_doc_words(0, 0)[:2])
    queries, qrels = read_split(beir_root / "sci", "dev", sci)
    assert [q.qid for q in queries] == [f"q{i}" for i in range(0, DOCS, 2)]
    assert qrels["q2"] == {"d2": 2, "d3": 1, "d4": 0} and queries[1].gold_pages == ["d2", "d3"]  # grade 0 is no gold
    marco = read_dataset_corpus(beir_root / "marco")
    assert marco.ids[3] == "3" and marco.titles[3] == ""
    queries, qrels = read_split(beir_root / "marco", "train", marco, limit=5, seed=1)
    assert len(queries) == 5 and set(qrels) == {q.qid for q in queries}
    assert qrels[queries[0].qid][queries[0].qid] == 2


BEIR_BREAKAGES = [
    (lambda f: f.joinpath("corpus.jsonl").write_text('{"_id": "d0", "text": "a"}\n{"_id": "d1", "text": \n'),
     r"corpus.jsonl:2: invalid JSON"),
    (lambda f: f.joinpath("corpus.jsonl").write_text('{"_id": "d0", "text": "a"}\n{"_id": "d0", "text": "b"}\n'),
     r"corpus.jsonl:2: duplicate document id 'd0' \(first at line 1\)"),
    (lambda f: f.joinpath("qrels", "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\tnope\t1\n"),
     r"dev.tsv:3: document 'nope' is not in .*corpus.jsonl"),
    (lambda f: f.joinpath("qrels", "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq99\td0\t1\n"),
     r"dev.tsv:2: query 'q99' is not in .*queries.jsonl"),
    (lambda f: f.joinpath("qrels", "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\tvery\n"),
     r"dev.tsv:2: relevance grade 'very' is not an integer"),
    (lambda f: f.joinpath("qrels", "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0 d0 1\n"),
     r"dev.tsv:2: expected 3 tab-separated fields"),
    (lambda f: f.joinpath("qrels", "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td0\t2\n"),
     r"dev.tsv:3: duplicate judged \(query, document\) pair"),
    (lambda f: f.joinpath("queries.jsonl").write_text('{"_id": "q0", "text": "a"}\n{"text": "b"}\n'),
     r"queries.jsonl:2: expected a non-empty '_id'"),
    (lambda f: f.joinpath("collection.tsv").write_text("0\tx\n"), r"not a BEIR or MS MARCO dataset folder"),
]
MSMARCO_BREAKAGES = [
    (lambda f: f.joinpath("qrels.dev.tsv").write_text("0\t0\t0\t1\n2\t0\t5\n"), r"qrels.dev.tsv:2: expected TREC qrels"),
    (lambda f: f.joinpath("collection.tsv").write_text("0\ta\n1\n"), r"collection.tsv:2: expected 2 tab-separated"),
    (lambda f: f.joinpath("collection.tsv").write_text("0\ta\n0\tb\n"), r"collection.tsv:2: duplicate passage id '0'"),
    (lambda f: f.joinpath("queries.dev.tsv").write_text("0\ta\n0\tb\n"), r"queries.dev.tsv:2: duplicate query id '0'"),
]


@pytest.mark.parametrize("writer,breakage,message", [(write_beir, *case) for case in BEIR_BREAKAGES]
                         + [(write_msmarco, *case) for case in MSMARCO_BREAKAGES])
def test_bad_input_fails_naming_file_and_line(tmp_path, writer, breakage, message):
    folder = writer(tmp_path / "dataset")
    breakage(folder)
    with pytest.raises(DataFormatError, match=message):
        read_split(folder, "dev", read_dataset_corpus(folder))


def test_measures_on_a_hand_case():
    """One query, judged a: 2, b: 1, c: 0, d: 1 (d never retrieved); ranked c, a, e, b."""
    qrels = {"q": {"a": 2, "b": 1, "c": 0, "d": 1}}
    run = {"q": {"c": 4.0, "a": 3.0, "e": 2.0, "b": 1.0}}
    dcg = 2 / math.log2(3) + 1 / math.log2(5)  # trec_eval's nDCG gains are the grades
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    expected = {"ndcg@10": dcg / ideal, "mrr@10": 1 / 2, "recall@100": 2 / 3, "map": (1 / 2 + 2 / 4) / 3}
    assert ir_scores(qrels, run) == pytest.approx(expected)


def _textbook(qrels: dict, run: dict) -> dict[str, float]:
    """The four measures written out (no ties in the run), averaged over the run's queries."""
    totals = dict.fromkeys(MEASURES, 0.0)
    for qid, docs in run.items():
        ranked = sorted(docs, key=lambda d: -docs[d])
        grades = qrels[qid]
        relevant = [d for d, g in grades.items() if g > 0]
        dcg = sum(grades.get(d, 0) / math.log2(rank + 2) for rank, d in enumerate(ranked[:10]))
        ideal = sum(g / math.log2(rank + 2) for rank, g in enumerate(sorted(grades.values(), reverse=True)[:10]))
        hits = [rank for rank, d in enumerate(ranked) if grades.get(d, 0) > 0]
        totals["ndcg@10"] += dcg / ideal if ideal else 0.0
        totals["mrr@10"] += 1 / (hits[0] + 1) if hits and hits[0] < 10 else 0.0
        totals["recall@100"] += sum(h < 100 for h in hits) / len(relevant) if relevant else 0.0
        totals["map"] += sum((i + 1) / (h + 1) for i, h in enumerate(hits)) / len(relevant) if relevant else 0.0
    return {name: total / len(run) for name, total in totals.items()}


@pytest.mark.parametrize("seed", range(5))
def test_measures_agree_with_the_formulas_and_the_run_file_on_random_runs(tmp_path, seed):
    rng = np.random.default_rng(seed)
    docs = [f"D{i}" for i in range(150)]
    qrels = {f"Q{q}": {d: int(rng.integers(0, 4)) for d in rng.choice(docs, 8, replace=False)} for q in range(12)}
    for q, judged in enumerate(qrels.values()):
        judged[docs[q]] = 1  # every query has a relevant document
    scores, rows = np.sort(rng.random((12, 120)))[:, ::-1], np.stack([rng.permutation(150)[:120] for _ in range(12)])
    rows[0, -5:] = -1  # FAISS's padding where fewer documents exist

    class Corpus:
        ids = docs

    run = ranking_run(list(qrels), scores, rows, Corpus())
    assert len(run["Q0"]) == 115
    ours = ir_scores(qrels, run)
    assert ours == pytest.approx(_textbook(qrels, run))
    write_run(tmp_path / "x.run", run, "tag")
    lines = (tmp_path / "x.run").read_text().splitlines()
    assert lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1" and lines[0].split()[5] == "tag"
    back = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, ir_measures.read_trec_run(str(tmp_path / "x.run")))
    assert {name: back[m] for name, m in MEASURES.items()} == pytest.approx(ours)


def test_each_task_trains_on_its_own_corpus(beir_root, tiny_t5_dir):
    """Positives, hard negatives (BM25 in the task's corpus) and the random fill all come from the task's own corpus."""
    from transformers import AutoTokenizer

    module = BeirDataModule(str(beir_root), ["sci", "marco"], tokenizer=AutoTokenizer.from_pretrained(tiny_t5_dir),
                            prompt_template="{prompt}: {query}", batch_size=4, n_negatives=3, bm25_top_k=5,
                            max_passage_length=16, eval_split="dev", negatives_miner=bm25_negatives)
    module.setup("fit")
    assert module.corpus is None and set(module.task_corpora) == {"sci", "marco"}
    assert module.corpus_of("marco").ids[0] == "0" and module.qrels["sci"]["q0"] == {"d0": 2, "d1": 1, "d2": 0}
    query = module.train_queries["marco"][0]
    assert query.positives == [0, 1] and query.negatives and not {0, 1} & set(query.negatives)
    seen: list[list[str]] = []
    collate = module.collator.passages
    module.collator.passages = lambda texts: (seen.append(list(texts)), collate(texts))[1]
    stream = module._batches(module.train_queries, 3, 0)
    for step in range(4):
        stream.batch(step)
    for number, texts in enumerate(seen):
        corpus = module.corpus_of(("sci", "marco")[number % 2])
        assert set(texts) <= {corpus.passage_text(r) for r in range(len(corpus))}


def beir_config(out: Path, model_dir: Path, root: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[
            "model=t5_prompted", f"model.encoder.path={model_dir}", "logger=csv", f"paths.output_dir={out}",
            "data=beir", f"data.root={root}", "data.task_names=[sci,marco]", "data.eval_split=dev", "data.batch_size=8",
            "data.max_passage_length=16", "data.max_query_length=8", "data.bm25_top_k=5", f"trainer={TRAINER}",
            "trainer.max_steps=2", "callbacks.model_checkpoint.every_n_train_steps=2", "index.batch_size=16", *overrides])


def test_train_two_datasets_then_evaluate_zero_shot_and_bm25(tmp_path, beir_root, tiny_t5_dir):
    trained = run(beir_config(tmp_path / "run", tiny_t5_dir, beir_root))
    out = tmp_path / "run"
    assert set(trained) == {"sci", "marco", "average"} and set(trained["sci"]) == set(MEASURES)
    assert (out / "index" / "sci" / "index.faiss").is_file() and (out / "index" / "marco" / "index.faiss").is_file()
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    assert saved["marco"] == pytest.approx(trained["marco"])
    lines = (out / "eval" / "marco.run").read_text().splitlines()
    assert len(lines) == 8 * DOCS and lines[0].split()[5] == "multiret-dense"
    assert {line.split()[2] for line in lines} <= {str(d) for d in range(DOCS)}  # marco's queries searched marco's corpus
    assert "dev/sci/ndcg@10" in (out / "csv" / "version_0" / "metrics.csv").read_text()
    # zero-shot: the checkpoint evaluated on one dataset it was not given at training
    write_beir(tmp_path / "other" / "fresh", dataset=3, splits=("test",))
    again = run(beir_config(tmp_path / "zero", tiny_t5_dir, tmp_path / "other", "stages=[index,evaluate]",
                            "data.task_names=[fresh]", "data.eval_split=test", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"))
    assert set(again) == {"fresh", "average"} and 0 < again["fresh"]["recall@100"] <= 1
    bm25 = run(beir_config(tmp_path / "bm25", tiny_t5_dir, beir_root, "retriever=bm25", "stages=[evaluate]"))
    assert bm25["sci"]["mrr@10"] > 0.9  # queries quote their document's words
    assert (tmp_path / "bm25" / "eval" / "sci.run").read_text().split()[5] == "multiret-bm25"


def test_bad_dataset_is_one_line_and_exit_2(tmp_path, beir_root, tiny_t5_dir, capsys):
    (tmp_path / "root" / "broken").mkdir(parents=True)
    code = cli(["evaluate", "retriever=bm25", "stages=[evaluate]", "data=beir", f"data.root={tmp_path / 'root'}",
                "data.task_names=[broken]", f"paths.output_dir={tmp_path / 'out'}", "logger=csv"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a BEIR or MS MARCO dataset folder" in err[0]
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file() and path.parent.name == "eval"]


def test_a_sub_corpus_keeps_every_sampled_querys_relevant_documents(beir_root):
    module = BeirDataModule(str(beir_root), ["sci", "marco"], max_train_queries=2, max_eval_queries=2,
                            corpus_max_pages=6, eval_split="dev", negatives_miner=None)
    module.setup("evaluate")
    for task in ("sci", "marco"):
        corpus = module.corpus_of(task)
        gold = {p for qs in (module.train_queries[task], module.eval_queries[task]) for q in qs for p in q.gold_pages}
        assert len(corpus) == 6 and gold <= set(corpus.ids) and len(module.qrels[task]) == 2
        assert all(corpus.ids[r] in q.gold_pages for q in module.train_queries[task] for r in q.positives)


def test_the_sweep_objective_is_the_configured_average_and_refuses_a_metric_the_run_lacks():
    beir = {"sci": {"ndcg@10": 0.4, "map": 0.3}, "average": {"ndcg@10": 0.4, "map": 0.3}}
    assert objective(beir, "ndcg@10") == 0.4
    assert objective({}, "Rprec") is None  # nothing evaluated (stages=[train], or a DDP process other than the first)
    with pytest.raises(UserError, match="optimized_metric=Rprec is not among this run's averaged metrics"):
        objective(beir, "Rprec")


def gzip_all(folder: Path) -> Path:
    """Replace every file of a dataset folder by its gzipped twin (``<name>.gz``), as some mirrors ship them."""
    for path in [p for p in folder.rglob("*") if p.is_file()]:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    return folder


def _contents(folder: Path, split: str) -> tuple:
    corpus = read_dataset_corpus(folder)
    queries, qrels = read_split(folder, split, corpus)
    return list(corpus.ids), list(corpus.texts), list(corpus.titles), queries, qrels


@pytest.mark.parametrize("writer", [write_beir, write_msmarco])
def test_gzipped_files_read_as_the_plain_ones(tmp_path, writer):
    plain = writer(tmp_path / "plain")
    zipped = gzip_all(writer(tmp_path / "zipped"))
    assert not [p for p in zipped.rglob("*") if p.is_file() and p.suffix != ".gz"]
    for split in ("train", "dev"):
        assert _contents(zipped, split) == _contents(plain, split)


def test_a_cut_gzip_or_a_doubled_file_is_one_line_and_exit_2(tmp_path, capsys):
    folder = gzip_all(write_beir(tmp_path / "root" / "sci"))
    whole = (folder / "corpus.jsonl.gz").read_bytes()
    (folder / "corpus.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    code = cli(["evaluate", "retriever=bm25", "stages=[evaluate]", "data=beir", f"data.root={tmp_path / 'root'}",
                "data.task_names=[sci]", "data.eval_split=dev", f"paths.output_dir={tmp_path / 'out'}", "logger=csv"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "corpus.jsonl.gz:" in err[0] and "cut short" in err[0]
    with pytest.raises(DataFormatError, match=r"corpus.jsonl.gz:\d+: the gzip stream is cut short"):
        read_dataset_corpus(folder)
    assert not [p for p in (folder / STORE_FOLDER).iterdir() if is_passage_store(p)]  # no half store to reuse
    (folder / "corpus.jsonl").write_text('{"_id": "d0", "text": "a"}\n')
    with pytest.raises(DataFormatError, match=r"holds both corpus.jsonl and corpus.jsonl.gz; keep one"):
        read_dataset_corpus(folder)


def _fail_reading(monkeypatch):
    """Any read of a dataset file fails from here on (the corpus's, queries' and judgements' alike)."""
    def refuse(path):
        raise AssertionError(f"{path} was read")
    monkeypatch.setattr(beir, "read_lines", refuse)
    monkeypatch.setattr(jsonl, "read_lines", refuse)


@pytest.mark.parametrize("writer", [write_beir, write_msmarco])
def test_the_store_is_built_once_reused_unread_and_rebuilt_when_the_corpus_changes(tmp_path, monkeypatch, writer):
    folder, stores = writer(tmp_path / "dataset"), tmp_path / "stores"
    first = read_dataset_corpus(folder, store_dir=stores)
    assert [p.name for p in stores.iterdir() if is_passage_store(p)] == [first.folder.name]
    assert first.rows_of_page(first.ids[3]) == [3] and not first.has_page("nope")
    assert first.page_codes[5] == first.page_code(first.ids[5]) and first.num_pages == DOCS
    with monkeypatch.context() as patch:
        _fail_reading(patch)
        again = read_dataset_corpus(folder, store_dir=stores)
    assert list(again.ids) == list(first.ids) and list(again.texts) == list(first.texts)
    corpus = folder / ("corpus.jsonl" if writer is write_beir else "collection.tsv")
    extra = '{"_id": "new", "title": "t", "text": "fresh words"}\n' if writer is write_beir else "new\tfresh words\n"
    corpus.write_text(corpus.read_text() + extra)
    changed = read_dataset_corpus(folder, store_dir=stores)
    assert len(changed) == DOCS + 1 and changed.texts[changed.row("new")] == "fresh words"
    assert [p.name for p in stores.iterdir() if is_passage_store(p)] == [first.folder.name]  # rebuilt over the old one


def test_a_failed_build_leaves_no_store_and_the_next_load_builds_it(tmp_path):
    folder = write_beir(tmp_path / "dataset")
    good = (folder / "corpus.jsonl").read_text()
    (folder / "corpus.jsonl").write_text(good + good.splitlines()[0] + "\n")
    with pytest.raises(DataFormatError, match=rf"corpus.jsonl:{DOCS + 1}: duplicate document id 'd0' \(first at line 1\)"):
        read_dataset_corpus(folder)
    assert not [p for p in (folder / STORE_FOLDER).iterdir() if is_passage_store(p)]
    (folder / "corpus.jsonl").write_text(good)
    assert len(read_dataset_corpus(folder)) == DOCS


def test_the_data_module_keeps_every_dataset_store_in_the_given_folder(tmp_path, beir_root):
    module = BeirDataModule(str(beir_root), ["sci", "marco"], store_dir=str(tmp_path / "stores"), eval_split="dev",
                            negatives_miner=None)
    module.setup("evaluate")
    folders = {module.corpus_of(task).folder for task in ("sci", "marco")}
    assert {folder.parent for folder in folders} == {tmp_path / "stores"} and len(folders) == 2
    assert all(is_passage_store(folder) for folder in folders)
