"""Score document rankings against graded judgements with the field's measures, and keep the TREC run files.

The numbers come from ir-measures (MacAvaney et al. 2022) over pytrec_eval, i.e. trec_eval's own
definitions: nDCG@10 with graded gains (BEIR's headline measure, Thakur et al. 2021), MRR@10
(MS MARCO's), Recall@100 and MAP over the retrieved depth, a document relevant when graded ≥ 1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import ir_measures
import numpy as np

from multiret.atomic import atomic_file, atomic_write_text
from multiret.data.beir import Qrels
from multiret.data.corpus import Passages
from multiret.eval.retrieval import METRICS

log = logging.getLogger(__name__)

MEASURES = {  # the name in metrics.json and the loggers → the ir-measures measure
    "ndcg@10": ir_measures.nDCG @ 10,
    "mrr@10": ir_measures.RR @ 10,
    "recall@100": ir_measures.R @ 100,
    "map": ir_measures.AP,
}
Run = dict[str, dict[str, float]]  # query id → {document id: score}


def ranking_run(query_ids: Sequence[str], scores: np.ndarray, rows: np.ndarray, corpus: Passages) -> Run:
    """Rankings (corpus rows and their scores, best first; -1 rows are padding) as a run keyed by document id."""
    return {qid: {corpus.ids[r]: float(s) for s, r in zip(query_scores, query_rows) if r >= 0}
            for qid, query_scores, query_rows in zip(query_ids, scores, rows)}


def ir_scores(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """:data:`MEASURES` averaged over the run's queries (trec_eval's default), by ir-measures."""
    aggregate = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, run)
    return {name: float(aggregate[measure]) for name, measure in MEASURES.items()}


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str) -> None:
    """A TREC run file, ``qid Q0 docid rank score tag`` per line, each query's documents by descending score."""
    with atomic_file(path) as handle:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda item: -item[1])
            handle.writelines(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n" for rank, (doc, score) in enumerate(ranked, 1))


def evaluate_task_runs(runs: Mapping[str, Run], qrels: Mapping[str, Qrels], out_dir: str | Path,
                       tag: str) -> dict[str, dict[str, float]]:
    """Score each task's run against its judgements; write ``<task>.run`` and ``metrics.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    results: dict[str, dict[str, float]] = {}
    for task, run in runs.items():
        write_run(out_dir / f"{task}.run", run, tag)
        results[task] = ir_scores(qrels[task], run)
        log.info("%s (%d queries): %s", task, len(run), results[task])
    atomic_write_text(out_dir / METRICS, json.dumps(results, indent=2))
    return results
