"""`multiret prepare dpr`: the TACO reference's multi-task DPR retriever files → a folder `data=kilt` reads.

The reference trains KILT on files it downloads, whose BM25 hard negatives come with them; this
command reads them as published (streamed, see :mod:`multiret.prepare.dpr_files`) into the
folder ``multiret prepare kilt`` writes, through the same resumable steps and passage store:
per task ``<task>-{train,dev}.jsonl`` (KILT's record shape, the gold pages being the pages of
the given positives), ``positives/<task>.jsonl`` (the given positives' passage ids; for AIDA
every passage of their pages, as the reference's qrels) and ``negatives/<task>.jsonl`` (the
given ``hard_negative_ctxs``). No BM25 is computed. With ``--kilt-dev`` KILT's dev files are the
dev split. Items are filtered as the reference's ``scripts/kilt/build_train.py`` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from multiret.atomic import atomic_file, atomic_write_text
from multiret.data.jsonl import DataFormatError
from multiret.data.negatives import negatives_file
from multiret.data.passage_files import AUTO, LAYOUTS
from multiret.data.prepared import REPORT
from multiret.data.store import META as STORE_META
from multiret.data.store import PassageStore
from multiret.errors import UserError, require_writable_folder
from multiret.prepare.dpr_files import DPR_NAMES, DprItem, dpr_file, iter_dpr_items
from multiret.prepare.kilt_tasks import (
    AIDA_WINDOW_WORDS,
    DEFAULT_MAX_TRAIN,
    KILT_TASKS,
    KiltTask,
    aida_window,
    convert_split,
    load_triviaqa_questions,
    sample_order,
)
from multiret.prepare.pipeline import (
    NEGATIVES_DIR,
    PASSAGES_DIR,
    POSITIVES_DIR,
    Steps,
    file_identity,
    parse_max_train,
    passage_store_step,
    remove_partial_outputs,
)

log = logging.getLogger(__name__)

REFERENCE_SEED = 42  # the reference's down-sampling seed (process_kilt.py)
HELDOUT_SPLIT = "val"  # the split the held-out last training items are written as
# the reference's names of KILT's dev files (setup_data.sh renames them), tried before KILT's own
REFERENCE_DEV_NAMES = {"triviaqa": "tqa-dev-kilt.jsonl", "hotpotqa": "hopo-dev-kilt.jsonl",
                       "structured_zeroshot": "zsre-dev-kilt.jsonl", "aidayago2": "aida-dev-kilt.jsonl"}
NO_POSITIVE, FEW_NEGATIVES, KEPT = 0, 1, 2


def kilt_dev_file(folder: Path, task: KiltTask) -> Path | None:
    """The task's KILT dev file in ``folder``: the reference's name, or KILT's; None if neither is there."""
    for name in (REFERENCE_DEV_NAMES.get(task.name), task.kilt_file("dev")):
        if name and (folder / name).is_file():
            return folder / name
    return None


def _verdict(item: DprItem, min_negatives: int) -> int:
    """The reference's filter: no positive, or fewer than ``min_negatives`` hard negatives, drops the item."""
    if not item.positives:
        return NO_POSITIVE
    return FEW_NEGATIVES if len(item.hard_negatives) < min_negatives else KEPT


class _SplitFiles:
    """The three files of one prepared split (queries, given positives, given negatives), written atomically together."""

    def __init__(self, stack: ExitStack, out: Path, task: KiltTask, split: str) -> None:
        self.queries = stack.enter_context(atomic_file(out / task.prepared_file(split)))
        self.positives = stack.enter_context(atomic_file(negatives_file(out / POSITIVES_DIR, task.name, split)))
        self.negatives = stack.enter_context(atomic_file(negatives_file(out / NEGATIVES_DIR, task.name, split)))

    def write(self, qid: str, text: str, pages: list[dict[str, str]], positives: list[str], negatives: list[str]) -> None:
        self.queries.write(json.dumps({"id": qid, "input": text, "output": [{"provenance": pages}]}, ensure_ascii=False) + "\n")
        self.positives.write(json.dumps({"id": qid, "positives": positives}, ensure_ascii=False) + "\n")
        self.negatives.write(json.dumps({"id": qid, "negatives": negatives}, ensure_ascii=False) + "\n")


class _Converter:
    """Turns DPR items of one task into prepared records, looking every ``psg_id`` up in the passage store."""

    def __init__(self, task: KiltTask, store: PassageStore, passages: Path, aida_words: int) -> None:
        self.task, self.store, self.passages, self.aida_words = task, store, passages, aida_words

    def _row(self, psg_id: str, source: Path, index: int) -> int:
        row = self.store.find(psg_id)
        if row is None:
            raise DataFormatError(f"{source}: item {index}: psg_id {psg_id!r} is not in the passage file {self.passages}; "
                                  "pass the passage split these files were made from (KILT's psgs_w100.tsv)")
        return row

    def write(self, files: _SplitFiles, item: DprItem, source: Path, index: int) -> None:
        rows = [self._row(p, source, index) for p in item.positives]
        for psg_id in item.hard_negatives:  # written as given, once known to the store
            self._row(psg_id, source, index)
        pages: list[dict[str, str]] = []
        for row in rows:
            page = {"wikipedia_id": self.store.page_ids[row], "title": self.store.titles[row]}
            if page not in pages:
                pages.append(page)
        if self.task.all_passages_positive:  # every passage of a gold page (the reference's AIDA qrels)
            rows = [r for page in pages for r in self.store.rows_of_page(page[self.store.page_key])]
        positives = list(dict.fromkeys(self.store.ids[r] for r in rows))
        text = item.question
        if self.task.name == "aidayago2":
            try:
                text = aida_window(text, self.aida_words, whole_right=True)
            except ValueError as error:
                raise DataFormatError(f"{source}: item {index}: AIDA question has {error}") from None
        files.write(str(index), text, pages, positives, item.hard_negatives)


def _counts() -> dict[str, int]:
    return {"items": 0, "kept": 0, "dropped_no_positive": 0, "dropped_few_negatives": 0}


def _count(counts: dict[str, int], verdict: int) -> None:
    counts["items"] += 1
    counts[("dropped_no_positive", "dropped_few_negatives", "kept")[verdict]] += 1


def _plan(source: Path, limit: int | None, seed: int, holdout: int, min_negatives: int,
          show_progress: bool) -> tuple[set[int] | None, set[int], int]:
    """A first pass, needed only to down-sample or hold out: which items are kept, and which held out.

    The reference down-samples before filtering, then holds out the last ``holdout`` items it
    kept, in the sample's order. Memory: one byte per item, and the sample's positions.
    """
    verdicts = bytearray(_verdict(item, min_negatives) for _, item in
                         tqdm(iter_dpr_items(source), desc=f"{source.name} (counting)", disable=not show_progress))
    order = sample_order(len(verdicts), limit, seed)
    positions = range(len(verdicts)) if order is None else order
    heldout: list[int] = []
    for position in reversed(positions):
        if len(heldout) == holdout:
            break
        if verdicts[position] == KEPT:
            heldout.append(position)
    return (None if order is None else set(order)), set(heldout), len(verdicts)


def convert_dpr_split(converter: _Converter, source: Path, out: Path, split: str, min_negatives: int,
                      limit: int | None = None, seed: int = REFERENCE_SEED, holdout: int = 0,
                      show_progress: bool = True) -> dict[str, dict[str, int]]:
    """Write one DPR file as prepared ``split`` (and, with ``holdout``, its last kept items as ``val``); returns the counts per split."""
    selected, heldout, total = (_plan(source, limit, seed, holdout, min_negatives, show_progress)
                                if limit is not None or holdout else (None, set(), None))
    counts = {split: _counts(), **({HELDOUT_SPLIT: _counts()} if holdout else {})}
    counts[split]["read"] = total if total is not None else 0
    with ExitStack() as stack:
        files = {name: _SplitFiles(stack, out, converter.task, name) for name in counts}
        for index, item in tqdm(iter_dpr_items(source), total=total, desc=source.name, disable=not show_progress):
            if total is None:
                counts[split]["read"] += 1
            if selected is not None and index not in selected:
                continue
            name = HELDOUT_SPLIT if index in heldout else split
            verdict = _verdict(item, min_negatives)
            _count(counts[name], verdict)
            if verdict == KEPT:
                converter.write(files[name], item, source, index)
    return counts


def prepare_dpr(
    files: str | os.PathLike[str],
    passages: str | os.PathLike[str],
    out: str | os.PathLike[str],
    kilt_dev: str | os.PathLike[str] | None = None,
    tasks: Sequence[str] = tuple(KILT_TASKS),
    min_negatives: int = 1,
    max_train: dict[str, int] | None = None,
    seed: int = REFERENCE_SEED,
    holdout: int = 0,
    triviaqa_questions: Sequence[str | os.PathLike[str]] = (),
    show_progress: bool = True,
    passage_layout: str = AUTO,
) -> dict[str, Any]:
    """Prepare the named tasks from the DPR files in ``files`` into ``out``; returns the report (also ``out/prepare_report.json``)."""
    files, passages, out = Path(files), Path(passages), Path(out)
    kilt_dev = None if kilt_dev is None else Path(kilt_dev)
    max_train = dict(DEFAULT_MAX_TRAIN if max_train is None else max_train)
    specs, sources = _check_inputs(files, passages, kilt_dev, tasks, min_negatives, max_train, holdout, triviaqa_questions)
    require_writable_folder(out, "--out")
    remove_partial_outputs(out)
    steps = Steps(out)
    store_meta = passage_store_step(steps, passages, out, passage_layout, show_progress)
    store = PassageStore(out / PASSAGES_DIR)
    store_identity = file_identity(out / PASSAGES_DIR / STORE_META)
    question_files = [file_identity(Path(p)) for p in triviaqa_questions]
    report: dict[str, Any] = {"passages": store_meta, "negatives": "given", "tasks": {}}
    for task in specs:
        train, dev = sources[task.name]
        limit = max_train.get(task.name)
        converter = _Converter(task, store, passages, AIDA_WINDOW_WORDS)
        params = {"files": {"train": file_identity(train), "dev": file_identity(dev)}, "passages": store_identity,
                  "min_negatives": min_negatives, "max_train": limit, "seed": seed if limit is not None else None,
                  "holdout": holdout, "kilt_dev": kilt_dev is not None,
                  "aida_window_words": AIDA_WINDOW_WORDS if task.name == "aidayago2" else None,
                  "triviaqa_questions": question_files if task.name == "triviaqa" and kilt_dev is not None else None}

        def convert(task: KiltTask = task, train: Path = train, dev: Path = dev, converter: _Converter = converter,
                    limit: int | None = limit) -> dict[str, Any]:
            counts = convert_dpr_split(converter, train, out, "train", min_negatives, limit, seed, holdout, show_progress)
            if kilt_dev is None:
                counts.update(convert_dpr_split(converter, dev, out, "dev", 0, show_progress=show_progress))
            else:
                questions = (load_triviaqa_questions(triviaqa_questions)
                             if task.name == "triviaqa" and dev.name == task.kilt_file("dev") else None)
                counts["dev"] = convert_split(task, "dev", dev, out / task.prepared_file("dev"), store, questions,
                                              show_progress=show_progress)
            return counts

        report["tasks"][task.name] = steps.run(f"task:{task.name}", params, _outputs(out, task, kilt_dev, holdout), convert)
    report["settings"] = {
        "tasks": {t.name: {"train": t.prepared_file("train"), "dev": t.prepared_file("dev"),
                           "all_passages_positive": t.all_passages_positive}
                  for t in specs},
        "source": "dpr", "files": str(files), "kilt_dev": None if kilt_dev is None else str(kilt_dev),
        "min_negatives": min_negatives, "max_train": max_train, "seed": seed, "holdout": holdout,
        "aida_window_words": AIDA_WINDOW_WORDS,
        "passage_layout": store_meta.get("layout"), "passage_template": None,
    }
    report["prepared_tasks"] = [name for name in KILT_TASKS if name in tasks or _still_current(out, steps, name, store_identity)]
    report["steps"] = {"ran": steps.ran, "skipped": steps.skipped}
    atomic_write_text(out / REPORT, json.dumps(report, indent=2))
    for name, splits in report["tasks"].items():
        for split, c in splits.items():
            if "kept" in c:
                log.info("%s %s: %d items, %d kept, %d without a positive, %d with fewer than %d hard negatives",
                         name, split, c["items"], c["kept"], c["dropped_no_positive"], c["dropped_few_negatives"], min_negatives)
    return report


def _outputs(out: Path, task: KiltTask, kilt_dev: Path | bool | None, holdout: int) -> list[Path]:
    """Every file a task's step writes: per split its queries, and for DPR-made splits its positives and negatives."""
    dpr_splits = ["train", *([] if kilt_dev else ["dev"]), *([HELDOUT_SPLIT] if holdout else [])]
    paths = [out / task.prepared_file(split) for split in dict.fromkeys([*dpr_splits, "dev"])]
    return paths + [negatives_file(out / folder, task.name, split) for folder in (POSITIVES_DIR, NEGATIVES_DIR)
                    for split in dpr_splits]


def _still_current(out: Path, steps: Steps, name: str, store_identity: dict[str, Any]) -> bool:
    """Whether an earlier run's task files are complete and made over the current passage store."""
    marker = steps.marker(f"task:{name}")
    if not marker.is_file():
        return False
    params = json.loads(marker.read_text(encoding="utf-8"))["params"]
    outputs = _outputs(out, KILT_TASKS[name], params.get("kilt_dev"), params.get("holdout", 0))
    return params.get("passages") == store_identity and all(path.is_file() for path in outputs)


def _check_inputs(
    files: Path, passages: Path, kilt_dev: Path | None, tasks: Sequence[str], min_negatives: int,
    max_train: dict[str, int], holdout: int, triviaqa_questions: Sequence[str | os.PathLike[str]],
) -> tuple[list[KiltTask], dict[str, tuple[Path, Path]]]:
    """Fail before any long step: unknown tasks, bad limits, missing files (all named at once); returns each task's train and dev file."""
    unknown = [t for t in (*tasks, *max_train) if t not in KILT_TASKS]
    if unknown:
        raise UserError(f"unknown KILT task(s) {unknown}; known: {', '.join(KILT_TASKS)}")
    if not tasks or len(set(tasks)) != len(tasks):
        raise UserError(f"--tasks must name each task once, got {list(tasks)}")
    if min_negatives < 0 or holdout < 0 or any(v < 1 for v in max_train.values()):
        raise UserError("--min-negatives and --holdout must be ≥ 0, and every --max-train value positive")
    specs = [KILT_TASKS[t] for t in tasks]
    missing = [] if passages.is_file() else [f"{passages} (the passage TSV)"]
    if kilt_dev is not None and not kilt_dev.is_dir():
        missing.append(f"{kilt_dev} (the --kilt-dev folder)")
    sources: dict[str, tuple[Path, Path]] = {}
    for task in specs:
        name = DPR_NAMES[task.name]
        train = dpr_file(files, task.name, "train")
        dev = dpr_file(files, task.name, "dev") if kilt_dev is None else kilt_dev_file(kilt_dev, task)
        if train is None:
            missing.append(str(files / f"{name}-train-multikilt.json.gz (or .json)"))
        if dev is None and kilt_dev is None:
            missing.append(str(files / f"{name}-dev-multikilt.json.gz (or .json; or pass KILT's dev files with --kilt-dev)"))
        elif dev is None and kilt_dev is not None and kilt_dev.is_dir():
            names = " or ".join(filter(None, (REFERENCE_DEV_NAMES.get(task.name), task.kilt_file("dev"))))
            missing.append(str(kilt_dev / names))
        if train is not None and dev is not None:
            sources[task.name] = (train, dev)
    missing += [f"{p} (TriviaQA questions)" for p in triviaqa_questions if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError("missing input file(s):\n  " + "\n  ".join(missing))
    tqa = sources.get("triviaqa")
    if kilt_dev is not None and tqa and tqa[1].name == KILT_TASKS["triviaqa"].kilt_file("dev") and not triviaqa_questions:
        raise UserError(f"{tqa[1]} holds TriviaQA ids only: pass --triviaqa-questions FILE ... (TriviaQA's question json), "
                        f"or put the reference's {REFERENCE_DEV_NAMES['triviaqa']} (questions joined in) in --kilt-dev")
    return specs, sources


def main(argv: Sequence[str]) -> int:
    """Command line of ``multiret prepare dpr``."""
    parser = argparse.ArgumentParser(prog="multiret prepare dpr", description=__doc__.splitlines()[0])
    parser.add_argument("--files", required=True, help="folder with the reference's <name>-{train,dev}-multikilt.json[.gz] files")
    parser.add_argument("--passages", required=True, help="the passage split the files' psg_id refer to (KILT's psgs_w100.tsv)")
    parser.add_argument("--passage-layout", default=AUTO, choices=[AUTO, *LAYOUTS],
                        help="layout of --passages (default: told from its first line)")
    parser.add_argument("--out", required=True, help="prepared folder (data.root of data=kilt)")
    parser.add_argument("--kilt-dev", default=None,
                        help="folder with KILT's dev jsonl files (KILT's names or the reference's hopo-, zsre-, aida-, tqa-): "
                             "the dev split instead of the DPR dev files")
    parser.add_argument("--triviaqa-questions", nargs="+", default=[],
                        help="TriviaQA question json files, for KILT's id-only triviaqa-dev_id-kilt.jsonl in --kilt-dev")
    parser.add_argument("--tasks", default=",".join(KILT_TASKS), help="comma-separated tasks (default: all eight)")
    parser.add_argument("--min-negatives", type=int, default=1,
                        help="drop a training item with fewer hard negatives (default 1, the reference's)")
    parser.add_argument("--max-train", type=parse_max_train, default=None,
                        help="seeded training-set caps, TASK=N,... or none (default: trex=100000,structured_zeroshot=100000)")
    parser.add_argument("--seed", type=int, default=REFERENCE_SEED,
                        help=f"seed of the down-sampling (default {REFERENCE_SEED}, the reference's)")
    parser.add_argument("--holdout", type=int, default=0,
                        help=f"hold each task's last N kept training items out as split {HELDOUT_SPLIT!r} (the reference: 500)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    report = prepare_dpr(  # input errors are reported by the command line, as one line (multiret.errors)
        args.files, args.passages, args.out, args.kilt_dev, [t.strip() for t in args.tasks.split(",") if t.strip()],
        args.min_negatives, args.max_train, args.seed, args.holdout, args.triviaqa_questions, not args.no_progress,
        args.passage_layout,
    )
    print(f"prepared {len(report['tasks'])} task(s) into {args.out}; report: {Path(args.out) / REPORT}")
    return 0
