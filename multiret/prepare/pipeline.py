"""`multiret prepare kilt`: resumable steps from raw KILT files to a folder `data=kilt` reads.

Steps, each writing its outputs atomically and then a done-marker ``.done/<step>.json`` that
holds the step's inputs and counts: the passage store, each task's conversion, the BM25 index,
each task's BM25 negatives. A re-run skips a step whose marker holds the same inputs (and says
so); a step whose inputs changed, or that never finished, runs again from scratch. Downstream
markers record their upstream outputs' identity, so redoing a step redoes what depends on it.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from multiret.atomic import atomic_write_text, remove_temporaries
from multiret.data.jsonl import DataFormatError
from multiret.data.kilt import read_queries
from multiret.data.negatives import negatives_file
from multiret.data.passage_files import AUTO, LAYOUTS
from multiret.data.prepared import REPORT
from multiret.data.store import META as STORE_META
from multiret.data.store import PassageStore
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE, check_template
from multiret.errors import UserError, require_writable_folder
from multiret.index.bm25 import DEFAULT_BM25, BM25Settings
from multiret.prepare.bm25_index import BACKENDS, SELECTION, BM25Searcher, build_bm25_index, resolve_backend
from multiret.prepare.kilt_tasks import (
    AIDA_WINDOW_WORDS,
    DEFAULT_MAX_TRAIN,
    KILT_TASKS,
    SPLITS,
    KiltTask,
    convert_split,
    load_triviaqa_questions,
)
from multiret.prepare.negatives import mine_negatives
from multiret.prepare.parallel import resolve_workers
from multiret.prepare.passages import build_passage_store

log = logging.getLogger(__name__)

PASSAGES_DIR, BM25_DIR, NEGATIVES_DIR, DONE_DIR = "passages", "bm25", "negatives", ".done"
POSITIVES_DIR = "positives"  # given positives (``multiret prepare dpr``), named as the negatives files
UTF8_CHECK_BYTES = 1 << 24  # chunk size of the store's UTF-8 check
BM25_PARAMS = "params.index.json"


class Steps:
    """Runs named steps once: a step is skipped when its marker records the same parameters."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def marker(self, name: str) -> Path:
        return self.out / DONE_DIR / f"{name.replace(':', '-')}.json"

    def run(self, name: str, params: dict[str, Any], outputs: Sequence[Path], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work`` unless the step's marker records ``params`` and every output is still there."""
        marker = self.marker(name)
        if marker.is_file():
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("params") == params and all(path.exists() for path in outputs):
                log.info("step %s: already done (%s), skipping", name, marker)
                self.skipped.append(name)
                return done["result"]
            log.info("step %s: its inputs or outputs changed since %s, running it again", name, marker)
        marker.unlink(missing_ok=True)
        log.info("step %s: running", name)
        result = work()
        atomic_write_text(marker, json.dumps({"params": params, "result": result}, indent=2))
        self.ran.append(name)
        return result


def file_identity(path: Path) -> dict[str, Any]:
    """What identifies a file cheaply: its absolute path, size and modification time (outputs get a new one when rewritten)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check_store_utf8(store: Path, source: Path) -> None:
    """Every id, text and title of a built passage store decodes as UTF-8 (read in chunks, at disk speed)."""
    for column in ("id", "text", "title"):
        decoder = codecs.getincrementaldecoder("utf-8")()
        done = 0
        with (store / f"{column}.bin").open("rb") as handle:
            while True:
                chunk = handle.read(UTF8_CHECK_BYTES)
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as error:
                    offsets = np.fromfile(store / f"{column}.off", dtype=np.int64)
                    row = int(np.searchsorted(offsets, done - pending + error.start, side="right")) - 1
                    ids = np.fromfile(store / "id.off", dtype=np.int64)
                    with (store / "id.bin").open("rb") as id_blob:
                        id_blob.seek(int(ids[row]))
                        passage_id = id_blob.read(int(ids[row + 1] - ids[row])).decode("utf-8", "replace")
                    raise DataFormatError(
                        f"{source}: the {column} of passage {passage_id!r} (passage {row + 1}) is not UTF-8; "
                        "save the file as UTF-8 and run again"
                    ) from None
                if not chunk:
                    break
                done += len(chunk)


def remove_partial_outputs(out: Path) -> None:
    """Temporary files of an interrupted step (they are renamed into place only when complete)."""
    for folder in (out, out / NEGATIVES_DIR, out / POSITIVES_DIR, out / DONE_DIR):
        remove_temporaries(folder)


def passage_store_step(steps: Steps, passages: Path, out: Path, layout: str, show_progress: bool) -> dict[str, Any]:
    """The step every prepare command starts with: the passage store ``out/passages``, checked as UTF-8; returns its metadata."""

    def build_store() -> dict[str, Any]:
        meta = build_passage_store(passages, out / PASSAGES_DIR, show_progress, layout)
        _check_store_utf8(out / PASSAGES_DIR, passages)  # before the step's marker: a bad store is rebuilt next time
        return meta

    return steps.run("passages", {"tsv": file_identity(passages), "layout": layout}, [out / PASSAGES_DIR / STORE_META], build_store)


def prepare_kilt(
    kilt_dir: str | os.PathLike[str],
    passages: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tasks: Sequence[str] = tuple(KILT_TASKS),
    triviaqa_questions: Sequence[str | os.PathLike[str]] = (),
    max_train: dict[str, int] | None = None,
    bm25_top_k: int = 30,
    seed: int = 13,
    show_progress: bool = True,
    passage_layout: str = AUTO,
    passage_template: str | None = DEFAULT_PASSAGE_TEMPLATE,
    workers: int | None = None,
    bm25: BM25Settings = DEFAULT_BM25,
    bm25_backend: str = "auto",
) -> dict[str, Any]:
    """Prepare the named tasks into ``out``; returns the report (also written to ``out/prepare_report.json``).

    ``passage_template`` is what BM25 indexes (as the dense model will encode it); the report
    records it, and the tasks the folder holds (``prepared_tasks``), for ``data=kilt``.
    ``workers`` processes build the BM25 index and mine its negatives (``None``: every core);
    ``bm25_backend`` scores the negatives (``auto``: numba where installed); the outputs depend on neither.
    ``bm25`` is the index's k1 and b, recorded in its step's marker.
    """
    kilt_dir, passages, out = Path(kilt_dir), Path(passages), Path(out)
    max_train = dict(DEFAULT_MAX_TRAIN if max_train is None else max_train)
    specs = _check_inputs(kilt_dir, passages, tasks, triviaqa_questions, max_train, bm25_top_k)
    check_template(passage_template, "--passage-template")
    workers = resolve_workers(workers)
    bm25_backend = resolve_backend(bm25_backend)
    require_writable_folder(out, "--out")
    remove_partial_outputs(out)
    steps = Steps(out)
    question_files = [file_identity(Path(p)) for p in triviaqa_questions]
    store_meta = passage_store_step(steps, passages, out, passage_layout, show_progress)
    store = PassageStore(out / PASSAGES_DIR, passage_template)
    store_identity = file_identity(out / PASSAGES_DIR / STORE_META)
    report: dict[str, Any] = {"passages": store_meta, "tasks": {}, "bm25": None, "negatives": {}}
    questions: dict[str, str] | None = None
    for task in specs:
        params = {"files": {s: file_identity(kilt_dir / task.kilt_file(s)) for s in SPLITS},
                  "max_train": max_train.get(task.name), "seed": seed if task.name in max_train else None,
                  "passages": store_identity,
                  "aida_window_words": AIDA_WINDOW_WORDS if task.name == "aidayago2" else None,
                  "triviaqa_questions": question_files if task.name == "triviaqa" else None}

        def convert(task: KiltTask = task) -> dict[str, Any]:
            nonlocal questions
            if task.name == "triviaqa" and questions is None:
                questions = load_triviaqa_questions(triviaqa_questions)
            return {
                split: convert_split(
                    task, split, kilt_dir / task.kilt_file(split), out / task.prepared_file(split), store,
                    questions if task.name == "triviaqa" else None,
                    max_train.get(task.name) if split == "train" else None, seed, show_progress,
                )
                for split in SPLITS
            }

        outputs = [out / task.prepared_file(s) for s in SPLITS]
        report["tasks"][task.name] = steps.run(f"task:{task.name}", params, outputs, convert)

    bm25_params = {"passages": store_identity, "k1": bm25.k1, "b": bm25.b, "passage_template": passage_template}
    report["bm25"] = steps.run("bm25", bm25_params, [out / BM25_DIR / BM25_PARAMS],
                               lambda: build_bm25_index(store, out / BM25_DIR, settings=bm25, show_progress=show_progress,
                                                        workers=workers))
    bm25_identity = file_identity(out / BM25_DIR / BM25_PARAMS)
    searcher: BM25Searcher | None = None  # started by the first step that needs it (its workers map the index)
    with ExitStack() as stack:
        for task in specs:
            queries_files = {split: out / task.prepared_file(split) for split in SPLITS}
            pools = {split: negatives_file(out / NEGATIVES_DIR, task.name, split) for split in SPLITS}

            def negatives(task: KiltTask = task, queries_files: dict[str, Path] = queries_files,
                          pools: dict[str, Path] = pools) -> dict[str, Any]:
                nonlocal searcher
                searcher = searcher if searcher is not None else stack.enter_context(
                    BM25Searcher(out / BM25_DIR, workers, bm25_backend))
                return {split: mine_negatives(searcher, store, f"{task.name} {split}",
                                              read_queries(queries_files[split], page_key=store.page_key),
                                              bm25_top_k, pools[split], show_progress=show_progress)
                        for split in SPLITS}

            params = {"top_k": bm25_top_k, "bm25": bm25_identity, "selection": SELECTION,
                      "queries": {split: file_identity(path) for split, path in queries_files.items()}}
            report["negatives"][task.name] = steps.run(f"negatives:{task.name}", params, list(pools.values()), negatives)

    report["settings"] = {
        "tasks": {t.name: {"train": t.prepared_file("train"), "dev": t.prepared_file("dev"),
                           "all_passages_positive": t.all_passages_positive}
                  for t in specs},
        "max_train": max_train, "seed": seed, "bm25_top_k": bm25_top_k,
        "aida_window_words": AIDA_WINDOW_WORDS, "passage_layout": store_meta.get("layout"),
        "passage_template": passage_template,
    }
    report["prepared_tasks"] = _prepared_tasks(out, steps, [t.name for t in specs], bm25_identity)
    report["steps"] = {"ran": steps.ran, "skipped": steps.skipped}
    atomic_write_text(out / REPORT, json.dumps(report, indent=2))
    _log_summary(report)
    return report


def _prepared_tasks(out: Path, steps: Steps, tasks: list[str], bm25_identity: dict[str, Any]) -> list[str]:
    """The tasks the folder holds, in KILT order: this run's, and earlier runs' still current.

    ``data=kilt`` trains on this list unless ``data.task_names`` says otherwise.
    """
    return [name for name, task in KILT_TASKS.items()
            if name in tasks or _still_current(out, steps, task, bm25_identity)]


def _still_current(out: Path, steps: Steps, task: KiltTask, bm25_identity: dict[str, Any]) -> bool:
    """Whether an earlier run's task files and negatives fit the current store and BM25 index (passage file, template)."""
    marker = steps.marker(f"negatives:{task.name}")
    if not marker.is_file():
        return False
    params = json.loads(marker.read_text(encoding="utf-8"))["params"]
    files = {split: out / task.prepared_file(split) for split in SPLITS}
    if not all(path.is_file() for path in files.values()):
        return False
    return params.get("bm25") == bm25_identity and params.get("queries") == {s: file_identity(p) for s, p in files.items()}


def _check_inputs(
    kilt_dir: Path, passages: Path, tasks: Sequence[str], triviaqa_questions: Sequence[str | os.PathLike[str]],
    max_train: dict[str, int], bm25_top_k: int,
) -> list[KiltTask]:
    """Fail before any long step: unknown tasks, missing files (all named at once), bad limits."""
    unknown = [t for t in (*tasks, *max_train) if t not in KILT_TASKS]
    if unknown:
        raise UserError(f"unknown KILT task(s) {unknown}; known: {', '.join(KILT_TASKS)}")
    if not tasks or len(set(tasks)) != len(tasks):
        raise UserError(f"--tasks must name each task once, got {list(tasks)}")
    if bm25_top_k < 1 or any(v < 1 for v in max_train.values()):
        raise UserError("--bm25-top-k and every --max-train value must be positive")
    specs = [KILT_TASKS[t] for t in tasks]
    missing = [str(kilt_dir / t.kilt_file(s)) for t in specs for s in SPLITS if not (kilt_dir / t.kilt_file(s)).is_file()]
    if not passages.is_file():
        missing.insert(0, f"{passages} (the passage TSV)")
    missing += [f"{p} (TriviaQA questions)" for p in triviaqa_questions if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError("missing input file(s):\n  " + "\n  ".join(missing))
    if "triviaqa" in tasks and not triviaqa_questions:
        raise UserError("task triviaqa needs --triviaqa-questions FILE ...: KILT's TriviaQA files hold ids only; "
                         "pass TriviaQA's question json files (e.g. the rc release's wikipedia-train.json and wikipedia-dev.json)")
    return specs


def _log_summary(report: dict[str, Any]) -> None:
    for task, splits in report["tasks"].items():
        for split, c in splits.items():
            questions = f", {c['missing_question']} ids without a TriviaQA question" if task == "triviaqa" else ""
            log.info("%s %s: %d items, %d without provenance, %d of %d gold pages missing from the passages%s",
                     task, split, c["items"], c["no_provenance"], c["missing_pages"], c["provenance_pages"], questions)


def parse_max_train(text: str) -> dict[str, int]:
    if text.strip().lower() == "none":
        return {}
    limits: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        task, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected TASK=N[,TASK=N...] or none, got {part!r}")
        limits[task.strip()] = int(value)
    return limits


def main(argv: Sequence[str]) -> int:
    """Command line of ``multiret prepare kilt``."""
    parser = argparse.ArgumentParser(prog="multiret prepare kilt", description=__doc__.splitlines()[0])
    parser.add_argument("--kilt-dir", required=True, help="folder with KILT's <task>-{train,dev}-kilt.jsonl files")
    parser.add_argument("--passages", required=True,
                        help="passage TSV: KILT's 6 columns, DPR's id/text/title, or a header naming id, text, title, wikipedia_id")
    parser.add_argument("--passage-layout", default=AUTO, choices=[AUTO, *LAYOUTS],
                        help="layout of --passages (default: told from its first line)")
    parser.add_argument("--passage-template", default=DEFAULT_PASSAGE_TEMPLATE,
                        type=lambda text: None if text.strip().lower() == "none" else text,
                        help=f"how a passage becomes BM25 (and model) input, with {{title}} and {{text}}, or none for the "
                             f"text alone; data.passage_template must match it (default {DEFAULT_PASSAGE_TEMPLATE!r})")
    parser.add_argument("--out", required=True, help="prepared folder (data.root of data=kilt)")
    parser.add_argument("--triviaqa-questions", nargs="+", default=[], help="TriviaQA json files holding the questions")
    parser.add_argument("--tasks", default=",".join(KILT_TASKS), help="comma-separated tasks (default: all eight)")
    parser.add_argument("--max-train", type=parse_max_train, default=None,
                        help="seeded training-set caps, TASK=N,... or none (default: trex=100000,structured_zeroshot=100000)")
    parser.add_argument("--bm25-top-k", type=int, default=30, help="BM25 depth the negatives come from (default 30)")
    parser.add_argument("--bm25-k1", type=float, default=DEFAULT_BM25.k1, help=f"BM25's k1 (default {DEFAULT_BM25.k1}, Anserini's)")
    parser.add_argument("--bm25-b", type=float, default=DEFAULT_BM25.b, help=f"BM25's b (default {DEFAULT_BM25.b}, Anserini's)")
    parser.add_argument("--seed", type=int, default=13, help="seed of the down-sampling (default 13)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that build the BM25 index and mine its negatives, threads with the numba backend "
                             "(default: every core)")
    parser.add_argument("--bm25-backend", default="auto", choices=BACKENDS,
                        help="how the negatives are scored, with the same result: numba (threads, the query words' postings; "
                             'pip install "multiret[bm25]"), numpy (bm25s in worker processes), or auto: numba if installed')
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(list(argv))
    # progress on stdout, so that stderr holds the one line of an error
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    report = prepare_kilt(  # input errors are reported by the command line, as one line (multiret.errors)
        args.kilt_dir, args.passages, args.out, [t.strip() for t in args.tasks.split(",") if t.strip()],
        args.triviaqa_questions, args.max_train, args.bm25_top_k, args.seed, not args.no_progress,
        args.passage_layout, args.passage_template, args.workers, BM25Settings(args.bm25_k1, args.bm25_b), args.bm25_backend,
    )
    print(f"prepared {len(report['tasks'])} task(s) into {args.out}; report: {Path(args.out) / REPORT}")
    return 0
