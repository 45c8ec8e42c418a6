"""The metrics validation logs while a run trains: torchmetrics' retrieval family plus KILT's page-level R-precision.

Every metric is a torchmetrics ``Metric``, so under DDP each process updates with its share of the
dev queries and ``compute()`` syncs the states across processes, as torchmetrics does: the
numbers equal those of one process scoring every query. Relevance is at KILT's page level: a
page is relevant when it is one of the query's gold pages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

from multiret.eval.kilt_metrics import rprecision

RPREC = "Rprec"


class PageRPrecision(Metric):
    """KILT's R-precision (``kilt/eval_retrieval.py``, Petroni et al. 2021): mean over queries of the best,
    over gold outputs, of |top-R guessed pages among the output's R pages| / R.

    The per-query rule is :func:`multiret.eval.kilt_metrics.rprecision`; this class only sums it
    in states that torchmetrics reduces across processes.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, guessed_pages: Sequence[Sequence[str]], gold_records: Sequence[Mapping[str, Any]]) -> None:
        """One page ranking (best first) and one KILT gold record per query."""
        for pages, record in zip(guessed_pages, gold_records, strict=True):
            self.total += rprecision(pages, record)
        self.count += len(gold_records)

    def compute(self) -> torch.Tensor:
        return self.total / self.count if self.count > 0 else torch.zeros_like(self.total)


def retrieval_metrics(recall_ks: Sequence[int] = (5, 20)) -> MetricCollection:
    """MRR@10, nDCG@10 and Recall@k for each ``recall_ks``: torchmetrics' retrieval metrics, fed ``(preds, target, indexes)``."""
    metrics: dict[str, Metric] = {"MRR@10": RetrievalMRR(top_k=10), "nDCG@10": RetrievalNormalizedDCG(top_k=10)}
    metrics.update({f"Recall@{k}": RetrievalRecall(top_k=k) for k in sorted(set(recall_ks))})
    return MetricCollection(metrics, compute_groups=False)


def metric_depth(recall_ks: Sequence[int]) -> int:
    """How many top pages per query the retrieval metrics need to see (with the gold pages added): their largest ``k``."""
    return max(10, *recall_ks)
