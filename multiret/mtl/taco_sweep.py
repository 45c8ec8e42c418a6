"""TACO's fast path: the rule of :func:`multiret.mtl.taco.taco_combine` swept block by block over the model.

The parameters are read as flat *segments*: one for every dense parameter (their task
gradients and EMA are the leading columns of one ``(T, P)`` tensor each), one per embedding
table, worked on only at the rows some task's batch touched. A step takes each task's median
importance first (the medians need every parameter), then updates the EMA, takes the softmax
and writes the weighted sum block by block while the block is in cache: memory traffic is
what the rule costs on a CPU. Off a table's touched rows every task gradient is exactly zero,
so the importance is zero (counted into the median, never written), the EMA only decays (free
in the lagged storage, :mod:`multiret.mtl.taco_ema`) and the combined gradient is zero.
``docs/benchmarks.md`` has what each of these choices saves, measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from multiret.mtl.buffers import TaskBuffers, nonzero_rows
from multiret.mtl.taco_ema import LaggedEMA

log = logging.getLogger(__name__)

EPS = 1e-12
# exp(-40) ≈ 4.2e-18: a softmax weight that small is far under float32 resolution of the largest one, while on a CPU
# exp of very negative inputs, and products that fall into denormal numbers, are much slower
MIN_EXPONENT = -40.0


def touched_rows(grads: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Of a table's ``(T, V, …)`` task gradients: the indices of the rows where any task's gradient is
    non-zero, and per task the number of rows where its own gradient is zero."""
    touched = torch.stack([nonzero_rows(task_grads) for task_grads in grads])
    return touched.any(dim=0).nonzero().squeeze(1), (grads.shape[1] - touched.sum(dim=1)).tolist()


def softmax_weighted_sum(ema: torch.Tensor, grads: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """``out = Σ_t softmax_t(scale · Ī_t) g_t`` for one block, written as ``Σ_t e_t g_t / Σ_t e_t`` with
    ``e_t = exp(scale · (Ī_t − max_u Ī_u))``: the same weights, with a few passes fewer than softmax then product.
    (Scaling after the subtraction matters: ``scale·Ī_t − scale·max`` loses the difference of
    two large, close values to rounding, and the exponent of the largest may come out above 0.)

    Exponents below ``MIN_EXPONENT`` are raised to it: such a weight is below 5e-18 of the
    largest one either way (median-normalised scores reach thousands when a task's median
    importance is 0).
    """
    top = ema[0].clone() if len(ema) == 1 else torch.maximum(ema[0], ema[1])
    for row in ema[2:]:
        torch.maximum(top, row, out=top)
    exps = torch.sub(ema, top).mul_(scale).clamp_(min=MIN_EXPONENT).exp_()
    torch.mul(exps[0], grads[0], out=out)
    total = exps[0] if len(exps) == 1 else torch.add(exps[0], exps[1])
    for task in range(1, len(exps)):
        out.addcmul_(exps[task], grads[task])
        if task > 1:
            total.add_(exps[task])
    out.div_(total)


class ParameterBlocks:
    """Parameters read as one flat vector, block by block (``block`` entries), without concatenating them each step.

    A parameter of at least half a block is cut into blocks that are views of it; smaller ones
    (biases, norms) are grouped into blocks that are copied together.
    """

    def __init__(self, params: list[torch.Tensor], block: int) -> None:
        self.params = params
        self.plan: list[tuple[int, int, list[tuple[int, int, int]]]] = []  # (start, end, [(param, from, to)])
        group: list[tuple[int, int, int]] = []
        offset = group_start = 0
        for i, param in enumerate(params):
            size = param.numel()
            if size >= block // 2:
                if group:
                    self.plan.append((group_start, offset, group))
                    group = []
                self.plan += [(offset + a, offset + min(a + block, size), [(i, a, min(a + block, size))])
                              for a in range(0, size, block)]
            else:
                if not group:
                    group_start = offset
                group.append((i, 0, size))
                if offset + size - group_start >= block:
                    self.plan.append((group_start, offset + size, group))
                    group = []
            offset += size
        if group:
            self.plan.append((group_start, offset, group))
        self.numel = offset

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        for start, end, pieces in self.plan:
            views = [self.params[i].detach().reshape(-1)[a:b] for i, a, b in pieces]
            yield start, end, views[0] if len(views) == 1 else torch.cat(views)


def flat_blocks(theta: torch.Tensor | ParameterBlocks, block: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, end, θ[start:end])`` over a flat vector or a :class:`ParameterBlocks`."""
    if isinstance(theta, ParameterBlocks):
        yield from theta
        return
    for start in range(0, theta.numel(), block):
        yield start, min(start + block, theta.numel()), theta[start : start + block]


@dataclass
class Segment:
    """Part of the model the rule sweeps as flat columns: θ (``n``), task gradients and stored EMA ``(T, n)``.

    For an embedding table worked on only at its touched rows, ``grads``/``ema`` are gathered
    copies of those rows, ``table`` is the table's full ``(θ, g, Ī)`` and ``index`` its touched
    rows; ``untouched[t]`` counts the entries where task t's gradient is known to be zero.
    ``block``: entries per block of the sweep.
    """

    theta: torch.Tensor | ParameterBlocks
    grads: torch.Tensor
    ema: torch.Tensor
    untouched: list[int]
    block: int
    table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    index: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        return self.grads.shape[1]

    @property
    def size(self) -> int:
        """Parameters the segment stands for (a table's untouched rows included)."""
        return self.table[0].numel() if self.table else self.numel

    @cached_property
    def blocks(self) -> list[tuple[int, int, torch.Tensor]]:
        """``(start, end, θ block)`` for this step (grouped small parameters are copied once, not per pass)."""
        return list(flat_blocks(self.theta, self.block))


def table_segment(theta: torch.Tensor, grads: torch.Tensor, ema: torch.Tensor, block: int,
                  task_rows: list[torch.Tensor | None] | None = None) -> Segment:
    """A table's segment: its touched rows, or the whole table as one flat segment when most rows are
    touched (then gathering and scattering rows would cost more than it saves). ``task_rows``: per task,
    the rows outside which its gradient is known to be zero (else the gradients are scanned)."""
    if task_rows is None or any(rows is None for rows in task_rows):
        index, untouched = touched_rows(grads)
    else:
        index = torch.cat(task_rows).unique()
        untouched = [grads.shape[1] - rows.numel() for rows in task_rows]
    row_size = theta[0].numel()
    untouched = [rows * row_size for rows in untouched]
    num_tasks = grads.shape[0]
    if 2 * index.numel() > grads.shape[1]:
        return Segment(theta.reshape(-1), grads.reshape(num_tasks, -1), ema.view(num_tasks, -1), untouched, block)
    return Segment(theta.index_select(0, index).reshape(-1), gather_rows(grads, index), gather_rows(ema, index),
                   untouched, block, table=(theta, grads, ema), index=index)


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[:, index]`` flattened to ``(T, n)``."""
    return values[:, index].reshape(values.shape[0], -1)


def lower_medians_(rows: torch.Tensor, nonzero: bool = False) -> list[float]:
    """``torch.median``'s value (the lower middle) of each row of ``rows`` (R, n), exactly; on a CPU the rows
    are reordered in place. With ``nonzero``, of each row's non-zero entries (0 if it has none); the rows
    must then be non-negative (importances), so that the zeros sort first.

    On a CPU by numpy's partition (a selection vectorised with AVX-512/AVX2 in numpy ≥ 2), where
    ``torch.median``'s selection runs on one core (``benchmarks/taco_parts.py`` compares them).
    Working in place spares a copy of the rows. The non-zero entries are counted by numpy too,
    row by row: ``torch.count_nonzero(rows, dim=1)`` builds a boolean copy and sums it, which
    took longer than the selections themselves on MiniLM's rows (``benchmarks/taco_parts.py``,
    ``*_count_nonzero_3x11m_ms``).
    """
    middle = (rows.shape[1] - 1) // 2
    if rows.device.type != "cpu":
        if not nonzero:
            return rows.median(dim=1).values.double().cpu().tolist()
        counts = torch.count_nonzero(rows, dim=1).tolist()
        return [float(row.kthvalue(nonzero_position(row.shape[0], count) + 1).values) if count else 0.0
                for row, count in zip(rows, counts)]
    values = rows.numpy()
    if not nonzero:
        values.partition(middle, axis=1)
        return values[:, middle].astype(np.float64).tolist()
    medians = []
    for row in values:
        count = int(np.count_nonzero(row))
        k = nonzero_position(row.shape[0], count)
        if count:
            row.partition(k)
        medians.append(float(row[k]) if count else 0.0)
    return medians


def nonzero_position(length: int, count: int) -> int:
    """Where the lower middle of a row's ``count`` non-zero entries lands once the row is sorted: past its zeros
    (the entries are non-negative)."""
    return length - count + (count - 1) // 2


def task_medians(rows: Callable[[int, int, torch.Tensor], None], sizes: list[int], num_tasks: int,
                 like: torch.Tensor, nonzero: bool = False) -> torch.Tensor:
    """Median over all parameters (or their non-zero entries) of each task's row; ``rows(task, index, out)``
    fills one tensor's slice.

    One P-sized buffer is reused for every task, so no full (T, P) copy is made.
    """
    buffer = torch.empty(sum(sizes), dtype=like.dtype, device=like.device)
    medians = torch.empty(num_tasks, dtype=like.dtype, device=like.device)
    for task in range(num_tasks):
        offset = 0
        for index, size in enumerate(sizes):
            rows(task, index, buffer[offset : offset + size])
            offset += size
        medians[task] = lower_medians_(buffer.view(1, -1), nonzero)[0]
    return medians


class Sweep:
    """One TACO step over flat segments, updating ``ema`` in place; equals :func:`taco_combine` on the flat model.

    The settings are the callback's (:class:`multiret.mtl.taco.TACO`); ``block`` is the entries
    swept at a time, ``batched_medians_up_to`` the parameter count up to which every task's
    importances go into one ``(T, P)`` tensor for the medians (above, one reused P-vector per
    task). ``medians`` holds, per task, the median the latest step took (logged).
    """

    def __init__(self, ema: LaggedEMA, *, tau: float, normalize: bool, median_over: str, block: int,
                 batched_medians_up_to: int) -> None:
        self.ema = ema
        self.tau = tau
        self.normalize = normalize
        self.median_over = median_over
        self.block = block
        self.batched_medians_up_to = batched_medians_up_to
        self.task_names: list[str] = []  # for the warnings
        self.medians: list[float] = []
        self._median_values: torch.Tensor | None = None  # the importances for the medians, kept from step to step
        self._zero_median_warned: set[str] = set()
        self._dense: ParameterBlocks | None = None  # the non-table parameters, as the first segment

    def start(self, params: list[torch.Tensor], row_sparse: list[bool], task_names: list[str]) -> None:
        """Get ready for these parameters (``row_sparse``: the tables worked on by rows) and tasks."""
        self._dense = ParameterBlocks([p for p, sparse in zip(params, row_sparse) if not sparse], self.block)
        self._median_values = None
        self.task_names = task_names

    def over_buffers(self, buffers: TaskBuffers, in_warmup: bool) -> list[torch.Tensor] | None:
        """The step on the callback's task buffers: one flat segment of all non-table parameters plus the
        touched rows of each table, the result written over task 0's buffers; one gradient per parameter."""
        params, row_sparse = buffers.params, buffers.row_sparse
        size = self._dense.numel
        segments, keys = [], []
        if size:
            unreached = [sum(p.numel() for p, sparse, hit in zip(params, row_sparse, reached) if not sparse and not hit)
                         for reached in buffers.reached]
            dense = Segment(self._dense, buffers.flat[:, :size], self.ema.flat[:, :size], unreached, self.block)
            segments.append(dense)
            keys.append(-1)
        for i, (p, g, e, sparse) in enumerate(zip(params, buffers.grads, self.ema.stored, row_sparse)):
            if sparse:
                segments.append(table_segment(p.detach(), g, e, self.block, buffers.held_rows(i)))
                keys.append(i)
        outputs = self.run(segments, in_warmup, buffers, keys)
        if outputs is None:
            return None
        flat, table_outputs = (outputs[0], iter(outputs[1:])) if size else (None, iter(outputs))
        combined, offset = [], 0
        for param, sparse in zip(params, row_sparse):
            if sparse:
                combined.append(next(table_outputs).view(param.shape))
            else:
                combined.append(flat[offset : offset + param.numel()].view(param.shape))
                offset += param.numel()
        return combined

    def over_tensors(self, task_grads: list[torch.Tensor], params: list[torch.Tensor], in_warmup: bool,
                     row_sparse: list[bool] | None = None) -> list[torch.Tensor] | None:
        """The step tensor by tensor (``row_sparse`` tables by touched rows); one new gradient per parameter."""
        num_tasks = task_grads[0].shape[0]
        segments = [
            table_segment(p.detach(), g, e, self.block) if sparse else
            Segment(p.detach().reshape(-1), g.reshape(num_tasks, -1), e.view(num_tasks, -1), [0] * num_tasks,
                    self.block)
            for p, g, e, sparse in zip(params, task_grads, self.ema.stored, row_sparse or [False] * len(params))
        ]
        outputs = self.run(segments, in_warmup)
        return None if outputs is None else [out.view(p.shape) for out, p in zip(outputs, params)]

    def run(self, segments: list[Segment], in_warmup: bool, buffers: TaskBuffers | None = None,
            keys: list[int] | None = None) -> list[torch.Tensor] | None:
        """The step; returns one combined gradient per segment (a table's in its shape), or None, with the EMA
        untouched, when an importance is not finite (a non-finite task gradient, or a product that overflows).

        ``buffers`` and ``keys`` (the callback's segments: -1 the non-table parameters, i table i)
        let the output go into task 0's buffers instead of fresh P-sized tensors.
        """
        num_tasks = segments[0].grads.shape[0]
        weights = self._ema_weights(segments, sum(segment.size for segment in segments))
        if weights is None:
            return None
        weights *= self.ema.advance([segment.ema for segment in segments if segment.index is not None])
        fused = self.normalize and not in_warmup
        score_scale = self.ema.beta**self.ema.lag / self.tau
        targets = keys if buffers is not None and keys else [None] * len(segments)
        outputs = []
        for segment, key in zip(segments, targets):
            out = self._output_rows(segment, key) if fused else None
            for start, end, theta in segment.blocks:
                grads = segment.grads[:, start:end]
                block = self.ema.add_(segment.ema[:, start:end], (theta * grads).abs_(), weights)
                if out is not None:
                    softmax_weighted_sum(block, grads, score_scale, out[start:end])
            if segment.index is not None:
                _, _, table_ema = segment.table
                for task_ema, task_rows in zip(table_ema, segment.ema):
                    task_ema.index_copy_(0, segment.index, task_rows.view(segment.index.numel(), *table_ema.shape[2:]))
            if out is not None:
                outputs.append(self._place(out.div_(num_tasks), segment, buffers, key))
        if in_warmup:
            return [(s.table[1] if s.table else s.grads).sum(0).div_(num_tasks) for s in segments]
        if fused:
            return outputs
        scale = self.ema_scale()
        return [self._place(self._weighted(s.ema, s.grads, scale), s, buffers, key)
                for s, key in zip(segments, targets)]

    @staticmethod
    def _output_rows(segment: Segment, key: int | None) -> torch.Tensor:
        """Where a segment's combined gradient is written. In the callback (``key`` given): over task 0's
        gradient (its buffer, or its gathered table rows), which each block has used by the time its
        output is written, so no P-sized output buffer is needed. Else (direct calls) a new tensor."""
        if key is not None:
            return segment.grads[0]
        return torch.empty(segment.numel, dtype=segment.grads.dtype, device=segment.grads.device)

    @staticmethod
    def _place(rows_value: torch.Tensor, segment: Segment, buffers: TaskBuffers | None, key: int | None
               ) -> torch.Tensor:
        """A segment's combined gradient from the values of its rows: all of them, or only the touched ones.

        A table's gradient is zero off the touched rows. In the callback it goes into task 0's
        buffer of the table, which is zero off the rows task 0 filled (a subset of the touched
        rows); :meth:`TaskBuffers.hold_rows` then names the rows written, so the next step clears just those.
        """
        if segment.index is None:
            if key is not None and key >= 0:
                buffers.hold_rows(key, None)  # the whole table buffer may hold the combined gradient
            return rows_value.view(segment.theta.shape) if isinstance(segment.theta, torch.Tensor) else rows_value
        theta = segment.table[0]
        if key is None:
            out = torch.zeros_like(theta)
        else:
            out = buffers.grads[key][0]
            buffers.hold_rows(key, segment.index)
        out.index_copy_(0, segment.index, rows_value.view(segment.index.numel(), *theta.shape[1:]))
        return out

    def _ema_weights(self, segments: list[Segment], total: int) -> torch.Tensor | None:
        """Per task, the factor of its importance in the EMA update: ``(1 − β) / (median_j I_tj + eps)`` if
        normalising; None if any importance is not finite.

        Finiteness: a non-finite ``θ_j g_tj`` makes ``Σ_j θ_j g_tj`` non-finite (a finite sum that
        overflows float range also counts). When every task's importances go into the medians'
        buffer, that sum is taken over the buffer; else it is one matrix-vector product per block.
        Medians: importances are ≥ 0, so when the entries known to be zero (untouched table
        rows, parameters the task's backward did not reach) fill the middle position the median
        is 0 with no selection (MiniLM: its word embeddings are half its parameters and most
        rows get no gradient). Otherwise the importances go into a zero-padded buffer, one
        ``(T, P)`` tensor up to ``batched_medians_up_to`` parameters, one reused P-vector per task
        above, and :func:`lower_medians_` selects.
        """
        num_tasks = segments[0].grads.shape[0]
        device = segments[0].grads.device
        weights = torch.full((num_tasks,), 1.0 - self.ema.beta, dtype=torch.float64)
        pending: list[int] = []
        if self.normalize:
            middle = (total - 1) // 2  # torch.median's (lower) middle position
            known_zeros = [sum(segment.untouched[task] for segment in segments) for task in range(num_tasks)]
            pending = [task for task in range(num_tasks) if self.median_over == "nonzero" or known_zeros[task] <= middle]
        # over the non-zero entries the untouched rows need no place in the buffer: they are zeros
        length = total if self.median_over == "all" else sum(segment.numel for segment in segments)
        checked_in_buffer = len(pending) == num_tasks and length <= self.batched_medians_up_to
        if not checked_in_buffer and not self._products_finite(segments):
            return None
        medians = [0.0] * num_tasks
        if pending:
            found = self._median_importance(segments, length, pending, check_finite=checked_in_buffer)
            if found is None:
                return None
            for task, median, zero_share in zip(pending, *found):
                if median == 0.0:
                    self._warn_zero_median(task, zero_share)
                weights[task] /= median + EPS
                medians[task] = median
        if self.normalize:
            for task in (task for task in range(num_tasks) if task not in pending):
                self._warn_zero_median(task, known_zeros[task] / total)
                weights[task] /= EPS
            self.medians = medians
        return weights.to(device=device, dtype=self.ema.compute_dtype)

    @staticmethod
    def _products_finite(segments: list[Segment]) -> bool:
        """Whether ``Σ_t Σ_j θ_j g_tj`` is finite, by one matrix-vector product per block."""
        checksum = torch.zeros((), dtype=torch.float64, device=segments[0].grads.device)
        for segment in segments:
            for start, end, theta in segment.blocks:
                checksum += torch.mv(segment.grads[:, start:end], theta).sum()
        return bool(torch.isfinite(checksum))

    def _median_importance(self, segments: list[Segment], total: int, tasks: list[int], check_finite: bool = False
                           ) -> tuple[list[float], list[float]] | None:
        """Each listed task's median importance over all ``total`` parameters (untouched rows as zeros past the
        segments' entries), or over its non-zero ones (``median_over``), and where it is 0, the share of zeros.
        With ``check_finite`` (every task in one buffer), None when the sum of the importances is not finite."""
        batched = total <= self.batched_medians_up_to
        groups = [tasks] if batched else [[task] for task in tasks]
        buffer = self._median_buffer(len(groups[0]), total, segments[0].grads.device)
        medians, zero_shares = [], []
        for group in groups:
            offset = 0
            for segment in segments:
                if len(group) == segment.grads.shape[0]:
                    grads = segment.grads
                else:
                    grads = segment.grads[group[0] : group[0] + 1] if len(group) == 1 else segment.grads[group]
                for start, end, theta in segment.blocks:
                    torch.mul(theta, grads[:, start:end], out=buffer[:, offset + start : offset + end]).abs_()
                offset += segment.numel
            buffer[:, offset:].zero_()  # the untouched table rows: zeros
            if check_finite and not bool(torch.isfinite(buffer.sum())):
                return None
            values = lower_medians_(buffer, self.median_over == "nonzero")
            medians += values
            zero_shares += [1.0 - float(torch.count_nonzero(row)) / total if value == 0.0 else 0.0
                            for row, value in zip(buffer, values)]
        return medians, zero_shares

    def _median_buffer(self, rows: int, total: int, device: torch.device) -> torch.Tensor:
        """A ``(rows, total)`` buffer for importances, kept from step to step (a fresh one costs page faults)."""
        if self._median_values is None or self._median_values.shape != (rows, total):
            self._median_values = torch.empty((rows, total), dtype=self.ema.compute_dtype, device=device)
        return self._median_values

    def _weighted(self, ema: torch.Tensor, grads: torch.Tensor, ema_scale: torch.Tensor) -> torch.Tensor:
        """``Σ_t softmax_t(s_t) g_t / T`` on flat ``(T, n)`` rows of the stored EMA, ``s_t = Ī_t / scale_t / τ``
        (the un-normalised variant's scores)."""
        ema = ema.to(self.ema.compute_dtype) * self.ema.beta**self.ema.lag
        scores = ema / ema_scale.view((-1,) + (1,) * (ema.dim() - 1)) / self.tau
        weights = torch.softmax(scores, dim=0).to(grads.dtype)
        return weights.mul_(grads).sum(0).div_(grads.shape[0])

    def _warn_zero_median(self, task: int, zero_share: float) -> None:
        """Say once per task that the normalisation degenerates: the rule then divides by eps alone."""
        name = self.task_names[task] if task < len(self.task_names) else str(task)
        if name in self._zero_median_warned:
            return
        self._zero_median_warned.add(name)
        if self.median_over == "nonzero":
            log.warning("TACO: task %s gave no parameter a non-zero importance this step (no gradient reached the "
                        "model), so its importance is divided by eps=1e-12", name)
            return
        log.warning(
            "TACO: the median importance of task %s is 0 (at least %.0f%% of the parameters got no gradient from it, "
            "e.g. embedding rows its batch did not use), so its importance is divided by eps=1e-12 and the task "
            "weights of most parameters become nearly 0 or 1 (method.median_over=all: the rule as published, in a "
            "regime it was not tuned for). method.median_over=nonzero takes the median over the entries the task "
            "reaches (docs/taco.md)",
            name, 100 * zero_share,
        )

    def ema_scale(self) -> torch.Tensor:
        """``median_j Ī_t + eps`` per task (the scale of the scores when ``normalize`` is off); sets ``medians``."""
        stored_ema = self.ema.stored

        def ema_row(task: int, index: int, out: torch.Tensor) -> None:
            out.copy_(stored_ema[index][task].flatten())

        like = torch.empty(0, dtype=self.ema.compute_dtype, device=stored_ema[0].device)
        stored = task_medians(ema_row, [e[0].numel() for e in stored_ema], stored_ema[0].shape[0], like,
                              self.median_over == "nonzero")
        medians = stored * self.ema.beta**self.ema.lag
        self.medians = medians.tolist()
        return medians + EPS

    def specialised(self) -> tuple[list[int], int]:
        """Per task, how many parameters have their largest task weight (> 0.5) on it, and of how many.

        Block by block with the rule's clamped exponents: the largest weight of a parameter is
        ``1 / Σ_t e_t`` (its own ``e`` is 1), so it exceeds 0.5 exactly when ``Σ_t e_t < 2``.
        """
        stored_ema = self.ema.stored
        num_tasks = stored_ema[0].shape[0]
        factor = self.ema.beta**self.ema.lag / self.tau
        per_task = None if self.normalize else (factor / self.ema_scale()).view(-1, 1)
        counts = torch.zeros(num_tasks, dtype=torch.long, device=stored_ema[0].device)
        total = 0
        for ema in stored_ema:
            flat = ema.view(num_tasks, -1)
            for start in range(0, flat.shape[1], self.block):
                block = flat[:, start : start + self.block].to(self.ema.compute_dtype)
                if per_task is not None:
                    block = block * per_task
                top, owner = block.max(dim=0)
                exponents = torch.sub(block, top)
                if per_task is None:
                    exponents.mul_(factor)  # scaled after the subtraction, as in the rule
                mass = exponents.clamp_(min=MIN_EXPONENT).exp_().sum(dim=0)
                counts += torch.bincount(owner[mass < 2.0], minlength=num_tasks)
            total += flat.shape[1]
        return counts.tolist(), total
