"""Datasets with their own corpus and graded relevance judgements: BEIR's layout and MS MARCO passage's.

A dataset is one folder, in one of two layouts told apart by its corpus file:

- ``beir`` (Thakur et al. 2021, BEIR): ``corpus.jsonl`` (``_id``, ``title``, ``text``),
  ``queries.jsonl`` (``_id``, ``text``), ``qrels/<split>.tsv`` (a header line, then
  ``query-id, corpus-id, score`` tab-separated; the score an integer grade);
- ``msmarco`` (Nguyen et al. 2016, MS MARCO passage ranking): ``collection.tsv`` (``pid, text``),
  ``queries.<split>.tsv`` (``qid, text``), ``qrels.<split>.tsv`` (TREC qrels: ``qid 0 pid grade``).

Any of these files may be gzipped instead (``corpus.jsonl.gz``, ...), not both. Each document is
its own page (``page_ids == ids``), so the KILT-shaped machinery (gold pages, positives, negatives
that avoid gold pages) works unchanged: a query's gold pages are the documents it judges relevant
(grade > 0). The corpus is streamed once into a memory-mapped passage store that later loads
reuse (:mod:`multiret.data.store_cache`). Every reader fails naming ``file:line``.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from multiret.data.corpus import Passages
from multiret.data.gzipped import GZIP, plain_or_gzipped, read_lines
from multiret.data.jsonl import DataFormatError, iter_jsonl
from multiret.data.kilt import Query, sample_in_order
from multiret.data.passage_files import PassageRow
from multiret.data.store import ID_PAGES, PassageStore
from multiret.data.store_cache import cached_store
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE

BEIR, MSMARCO = "beir", "msmarco"
CORPUS_FILES = {BEIR: "corpus.jsonl", MSMARCO: "collection.tsv"}
PAGE_KEY = ID_PAGES  # a document is its own page
STORE_FOLDER = ".multiret-store"  # where a dataset's corpus store is kept when no store folder is given: inside the dataset's

Qrels = dict[str, dict[str, int]]  # query id → {document id: grade}, as ir-measures and trec_eval read them

csv.field_size_limit(sys.maxsize)  # BEIR documents can be long


def corpus_file(folder: str | Path) -> tuple[str, Path]:
    """The folder's layout (``beir`` or ``msmarco``) and corpus file (plain or gzipped); a clear error unless exactly one."""
    folder = Path(folder)
    found = [(layout, plain_or_gzipped(folder / name)) for layout, name in CORPUS_FILES.items()]
    found = [(layout, path) for layout, path in found if path.is_file()]
    if len(found) != 1:
        held = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "no such folder"
        raise DataFormatError(
            f"{folder}: not a BEIR or MS MARCO dataset folder (expected exactly one of corpus.jsonl with queries.jsonl "
            f"and qrels/<split>.tsv, or collection.tsv with queries.<split>.tsv and qrels.<split>.tsv, each plain or "
            f"{GZIP}; found: {held})"
        )
    return found[0]


@dataclass(frozen=True)
class DatasetFiles:
    """Where one dataset's corpus, queries and judgements of a split are (each file plain or gzipped)."""

    layout: str
    corpus: Path
    queries: Path
    qrels: Path

    @classmethod
    def of(cls, folder: str | Path, split: str) -> DatasetFiles:
        folder = Path(folder)
        layout, corpus = corpus_file(folder)
        if layout == BEIR:
            queries, qrels = folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
        else:
            queries, qrels = folder / f"queries.{split}.tsv", folder / f"qrels.{split}.tsv"
        return cls(layout, corpus, plain_or_gzipped(queries), plain_or_gzipped(qrels))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of a UTF-8 file, plain or gzipped, the line ending dropped."""
    for line_number, raw in enumerate(read_lines(path), start=1):
        try:
            yield line_number, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise DataFormatError(f"{path}:{line_number}: not UTF-8 (byte {raw[error.start]:#04x} at byte {error.start + 1} "
                                  "of the line); save the file as UTF-8") from None


def _tsv_rows(path: Path, columns: int, what: str) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of a tab-separated file with ``columns`` fields per non-blank line."""
    for line_number, line in _lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != columns:
            raise DataFormatError(f"{path}:{line_number}: expected {columns} tab-separated fields ({what}), got {len(fields)}")
        yield line_number, fields


def _text_field(record: dict, key: str, where: str) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: {key!r} must be a string")
    return value


def _id_field(record: dict, where: str) -> str:
    value = record.get("_id")
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
        raise DataFormatError(f"{where}: expected a non-empty '_id' (string)")
    return str(value).strip()


def _unique(seen: dict, key: object, line: int, path: Path, what: str) -> None:
    first = seen.setdefault(key, line)
    if first != line:
        raise DataFormatError(f"{path}:{line}: duplicate {what} {key!r} (first at line {first}); each {what} must be unique")


def iter_documents(files: DatasetFiles) -> Iterator[PassageRow]:
    """The dataset's documents in file order, each its own page (a duplicate id is the store writer's to find)."""
    if files.layout == BEIR:
        for line, record in iter_jsonl(files.corpus):
            where = f"{files.corpus}:{line}"
            doc = _id_field(record, where)
            yield PassageRow(line, doc, _text_field(record, "text", where), _text_field(record, "title", where), doc)
    else:
        for line, (doc, text) in _tsv_rows(files.corpus, 2, "pid, passage"):
            yield PassageRow(line, doc.strip(), text, "", doc.strip())


def read_dataset_corpus(folder: str | Path, template: str | None = DEFAULT_PASSAGE_TEMPLATE,
                        store_dir: str | Path | None = None) -> PassageStore:
    """The dataset's documents, each its own page, as a memory-mapped store: built from the corpus file on the
    first load into ``store_dir`` (default ``<folder>/.multiret-store``), mapped unread while the file is unchanged."""
    files = DatasetFiles.of(folder, "")
    unit = "document" if files.layout == BEIR else "passage"
    store_dir = Path(store_dir) if store_dir is not None else Path(folder) / STORE_FOLDER
    return cached_store(files.corpus, iter_documents(files), store_dir, PAGE_KEY, {"layout": files.layout}, template, unit)


def _read_query_texts(files: DatasetFiles) -> dict[str, str]:
    seen: dict[str, int] = {}
    texts: dict[str, str] = {}
    if files.layout == BEIR:
        for line, record in iter_jsonl(files.queries):
            where = f"{files.queries}:{line}"
            qid = _id_field(record, where)
            _unique(seen, qid, line, files.queries, "query id")
            texts[qid] = _text_field(record, "text", where)
    else:
        if not files.queries.is_file():
            raise FileNotFoundError(f"{files.queries}: no such file (MS MARCO's queries of this split)")
        for line, (qid, text) in _tsv_rows(files.queries, 2, "qid, query"):
            _unique(seen, qid.strip(), line, files.queries, "query id")
            texts[qid.strip()] = text
    return texts


def read_qrels(files: DatasetFiles) -> Qrels:
    """The split's judgements: BEIR's tsv after its header line, or TREC qrels; a pair judged twice fails."""
    path = files.qrels
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the relevance judgements of this split)")
    qrels: Qrels = {}
    line_of: dict[tuple[str, str], int] = {}
    if files.layout == BEIR:
        rows = ((line, qid, doc, grade) for line, (qid, doc, grade) in _tsv_rows(path, 3, "query-id, corpus-id, score"))
    else:
        rows = _trec_qrels(path)
    for line, qid, doc, grade in rows:
        if files.layout == BEIR and line == 1 and not grade.strip().lstrip("-").isdigit():
            continue  # BEIR's header line
        qid, doc = qid.strip(), doc.strip()
        try:
            value = int(grade)
        except ValueError:
            raise DataFormatError(f"{path}:{line}: relevance grade {grade!r} is not an integer") from None
        _unique(line_of, (qid, doc), line, path, "judged (query, document) pair")
        qrels.setdefault(qid, {})[doc] = value
    if not qrels:
        raise DataFormatError(f"{path}: no judgements in the file")
    return qrels


def _trec_qrels(path: Path) -> Iterator[tuple[int, str, str, str]]:
    for line_number, line in _lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise DataFormatError(f"{path}:{line_number}: expected TREC qrels 'qid 0 pid grade' (4 fields), got {len(fields)}")
        yield line_number, fields[0], fields[2], fields[3]


def read_split(folder: str | Path, split: str, corpus: Passages, limit: int | None = None,
               seed: int = 0) -> tuple[list[Query], Qrels]:
    """The split's judged queries (gold pages: documents graded > 0), in judgement order, and their judgements.

    With ``limit``, a seeded sample of that many queries, and the judgements of those only. A
    judgement naming a query absent from the queries file, or a document absent from the corpus,
    fails naming ``file:line``.
    """
    files = DatasetFiles.of(folder, split)
    qrels = read_qrels(files)
    texts = _read_query_texts(files)
    for qid, judged in qrels.items():
        if qid not in texts:
            raise DataFormatError(f"{_line_of(files.qrels, qid, None)}: query {qid!r} is not in {files.queries}")
        for doc in judged:
            if corpus.find(doc) is None:
                raise DataFormatError(f"{_line_of(files.qrels, qid, doc)}: document {doc!r} is not in {files.corpus}")
    queries = [Query(qid=qid, text=texts[qid], gold_pages=[d for d, g in judged.items() if g > 0])
               for qid, judged in qrels.items()]
    queries = sample_in_order(queries, limit, seed)
    return queries, {q.qid: qrels[q.qid] for q in queries}


def _line_of(path: Path, qid: str, doc: str | None) -> str:
    """``file:line`` of the first judgement of ``qid`` (of ``doc`` too, if given), for an error message."""
    for line_number, line in _lines(path):
        fields = [f.strip() for f in (line.split("\t") if "\t" in line else line.split())]
        if fields and fields[0] == qid and (doc is None or doc in fields[1:3]):
            return f"{path}:{line_number}"
    return str(path)
