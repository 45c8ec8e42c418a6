"""TACO: per-parameter task weights from an EMA of task importance (Zhang et al., TACL 2023).

For task t and parameter j the instantaneous importance is the first-order Taylor
sensitivity ``I_tj = |θ_j · g_tj|``, divided by its median over all parameters when
``normalize``; an EMA ``Ī`` of it (β, updated every step, warm-up included) gives scores
``Ī / τ``, and a softmax over tasks gives weights ``α_tj``. The update is ``Σ_t g_t / T``
during warm-up and ``Σ_t α_t ⊙ g_t / T`` after (``docs/taco.md`` holds the exact rule).

``median_over`` says which entries a task's median is taken over: ``all`` (the rule as
published: every parameter, zeros included) or ``nonzero`` (the entries where the task's
importance is not zero, the default; ``docs/taco.md`` says why). ``ema_dtype: bfloat16`` halves
the EMA's memory (updates stochastically rounded, an approximation); ``parameters`` restricts
the rule to some parameter groups. The median is ``torch.median``'s: the lower middle value
for an even count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import lightning as L
import numpy as np
import torch

from multiret.mtl.base import GradientMethod, nonzero_rows, task_tensors

log = logging.getLogger(__name__)

EPS = 1e-12
MEDIAN_OVER = ("all", "nonzero")  # the entries a task's median is taken over: every one (as published), or the non-zero


def row_medians(values: torch.Tensor, median_over: str = "all") -> torch.Tensor:
    """``torch.median``'s value of each row of non-negative ``(T, P)`` values, as ``(T, 1)``: over every entry,
    or (``nonzero``) over the non-zero entries only (0 for a row without any)."""
    if median_over == "all":
        return values.median(dim=-1, keepdim=True).values
    medians = [row[row != 0].median() if bool((row != 0).any()) else row.new_zeros(()) for row in values]
    return torch.stack(medians).unsqueeze(1)


def taco_combine(
    task_grads: torch.Tensor,
    params: torch.Tensor,
    ema: torch.Tensor,
    *,
    beta: float,
    tau: float,
    in_warmup: bool,
    normalize: bool = True,
    median_over: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One TACO step on flat tensors: ``task_grads`` (T, P), ``params`` (P,), ``ema`` (T, P).

    Returns ``(combined (P,), new_ema (T, P))`` without modifying the inputs (a fixed contract).
    ``median_over="all"`` is the rule as published; ``"nonzero"`` takes each task's median over
    the entries where its importance (or, without ``normalize``, its EMA) is not zero.
    """
    num_tasks = task_grads.shape[0]
    importance = (params.unsqueeze(0) * task_grads).abs()
    if normalize:
        importance = importance / (row_medians(importance, median_over) + EPS)
    new_ema = beta * ema + (1.0 - beta) * importance
    if in_warmup:
        return task_grads.sum(0) / num_tasks, new_ema
    if normalize:
        scores = new_ema / tau
    else:
        scores = new_ema / (row_medians(new_ema, median_over) + EPS) / tau
    weights = torch.softmax(scores, dim=0)
    return (weights * task_grads).sum(0) / num_tasks, new_ema


def touched_rows(grads: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Of a table's ``(T, V, …)`` task gradients: the indices of the rows where any task's gradient is
    non-zero, and per task the number of rows where its own gradient is zero."""
    touched = torch.stack([nonzero_rows(task_grads) for task_grads in grads])
    return touched.any(dim=0).nonzero().squeeze(1), (grads.shape[1] - touched.sum(dim=1)).tolist()


MIN_EXPONENT = -40.0  # exp(-40) ≈ 4.2e-18


def softmax_weighted_sum(ema: torch.Tensor, grads: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """``out = Σ_t softmax_t(scale · Ī_t) g_t`` for one block, written as ``Σ_t e_t g_t / Σ_t e_t`` with
    ``e_t = exp(scale · (Ī_t − max_u Ī_u))``: the same weights, with a few passes fewer than softmax then product.
    (Scaling after the subtraction matters: ``scale·Ī_t − scale·max`` loses the difference of
    two large, close values to rounding, and the exponent of the largest may come out above 0.)

    Exponents below ``MIN_EXPONENT`` are raised to it: such a weight is below 5e-18 of the
    largest one either way (far under float32 resolution), while on a CPU the exp of very
    negative inputs, and products that fall into denormal numbers, are tens of times slower
    (median-normalised scores reach thousands when a task's median importance is 0).
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


BATCHED_MEDIANS_UP_TO = 1 << 22  # parameters up to which every task's importances go into one (T, P) tensor
BLOCK = 1 << 16  # elements per fused block: a block's T-row temporaries stay in the CPU cache
LAG_LIMIT = 2.0**24  # the largest β^-lag by which the stored EMA may run ahead of the real one


class ParameterBlocks:
    """Parameters read as one flat vector, block by block, without concatenating them each step.

    A parameter of at least half a block is cut into blocks that are views of it; smaller ones
    (biases, norms) are grouped into blocks that are copied together.
    """

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.plan: list[tuple[int, int, list[tuple[int, int, int]]]] = []  # (start, end, [(param, from, to)])
        group: list[tuple[int, int, int]] = []
        offset = group_start = 0
        for i, param in enumerate(params):
            size = param.numel()
            if size >= BLOCK // 2:
                if group:
                    self.plan.append((group_start, offset, group))
                    group = []
                self.plan += [(offset + a, offset + min(a + BLOCK, size), [(i, a, min(a + BLOCK, size))])
                              for a in range(0, size, BLOCK)]
            else:
                if not group:
                    group_start = offset
                group.append((i, 0, size))
                if offset + size - group_start >= BLOCK:
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


def flat_blocks(theta: torch.Tensor | ParameterBlocks) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, end, θ[start:end])`` over a flat vector or a :class:`ParameterBlocks`."""
    if isinstance(theta, ParameterBlocks):
        yield from theta
        return
    for start in range(0, theta.numel(), BLOCK):
        yield start, min(start + BLOCK, theta.numel()), theta[start : start + BLOCK]


@dataclass
class Segment:
    """Part of the model the rule sweeps as flat columns: θ (``n``), task gradients and stored EMA ``(T, n)``.

    For an embedding table worked on only at its touched rows, ``grads``/``ema`` are gathered
    copies of those rows, ``table`` is the table's full ``(θ, g, Ī)`` and ``index`` its touched
    rows; ``untouched[t]`` counts the entries where task t's gradient is known to be zero.
    """

    theta: torch.Tensor | ParameterBlocks
    grads: torch.Tensor
    ema: torch.Tensor
    untouched: list[int]
    table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    index: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        return self.grads.shape[1]

    @cached_property
    def blocks(self) -> list[tuple[int, int, torch.Tensor]]:
        """``(start, end, θ block)`` for this step (grouped small parameters are copied once, not per pass)."""
        return list(flat_blocks(self.theta))


def table_segment(theta: torch.Tensor, grads: torch.Tensor, ema: torch.Tensor,
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
        return Segment(theta.reshape(-1), grads.reshape(num_tasks, -1), ema.view(num_tasks, -1), untouched)
    return Segment(theta.index_select(0, index).reshape(-1), gather_rows(grads, index), gather_rows(ema, index),
                   untouched, table=(theta, grads, ema), index=index)


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[:, index]`` flattened to ``(T, n)``."""
    return values[:, index].reshape(values.shape[0], -1)


def decay_(ema: torch.Tensor, factor: float, generator: torch.Generator | None) -> None:
    """``Ī ← factor · Ī`` in place (stochastically rounded for a bf16 EMA)."""
    if ema.dtype == torch.bfloat16:
        ema.copy_(stochastic_round_bf16(ema.float().mul_(factor), generator))
    else:
        ema.mul_(factor)


EMA_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def stochastic_round_bf16(values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """float32 → bfloat16, rounding away from zero with probability equal to the discarded fraction.

    Unbiased, so a bf16 EMA with β = 0.999 still moves: with round-to-nearest, an update of
    (1 − β)·I below half a bf16 step (2⁻⁹ relative) would be lost every time.
    """
    noise = torch.randint(0, 1 << 16, values.shape, dtype=torch.int32, device=values.device, generator=generator)
    return ((values.view(torch.int32) + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def lower_medians_(rows: torch.Tensor, nonzero: bool = False) -> list[float]:
    """``torch.median``'s value (the lower middle) of each row of ``rows`` (R, n), exactly; on a CPU the rows
    are reordered in place. With ``nonzero``, of each row's non-zero entries (0 if it has none); the rows
    must then be non-negative (importances), so that the zeros sort first.

    On a CPU by numpy's partition (a selection vectorised with AVX-512/AVX2 in numpy ≥ 2): on
    the tiny T5 it is ~5× faster than ``torch.median``, whose selection runs on one core
    (``benchmarks/taco_parts.py``). Working in place spares a copy of the rows.
    """
    if nonzero:
        counts = torch.count_nonzero(rows, dim=1).tolist()
        positions = [rows.shape[1] - count + (count - 1) // 2 for count in counts]  # past the zeros
    else:
        positions = [(rows.shape[1] - 1) // 2] * rows.shape[0]
    if rows.device.type != "cpu":
        if not nonzero:
            return rows.median(dim=1).values.double().cpu().tolist()
        return [float(row.kthvalue(k + 1).values) if count else 0.0 for row, k, count in zip(rows, positions, counts)]
    values = rows.numpy()
    if not nonzero:
        values.partition(positions[0], axis=1)
        return values[:, positions[0]].astype(np.float64).tolist()
    medians = []
    for row, k, count in zip(values, positions, counts):
        if count:
            row.partition(k)
        medians.append(float(row[k]) if count else 0.0)
    return medians


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


class TACO(GradientMethod):
    """The TACO rule applied per parameter tensor; equals :func:`taco_combine` on the flattened model.

    The EMA is stored as ``Ī · β^-lag`` (``self.ema``; :meth:`importance_ema` gives ``Ī``):
    then the update ``Ī ← β Ī + (1 − β) I`` is ``stored += (1 − β) β^-lag I`` with ``lag``
    one more than the step before, so the entries a step does not touch (the unused rows of an
    embedding table) cost nothing, and no step makes a separate decay pass. When ``β^-lag``
    would pass ``LAG_LIMIT`` (every ~16,600 steps at β = 0.999) the stored values are decayed
    for real and ``lag`` starts again from 0.
    """

    name = "taco"

    def __init__(
        self,
        beta: float = 0.999,
        tau: float = 2.0,
        normalize: bool = True,
        warmup_ratio: float = 0.0,
        median_over: str = "nonzero",
        ema_dtype: str = "float32",
        seed: int = 0,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if median_over not in MEDIAN_OVER:
            raise ValueError(f"method.median_over={median_over!r}; choose one of {list(MEDIAN_OVER)}")
        self.median_over = median_over
        if ema_dtype not in EMA_DTYPES:
            raise ValueError(f"method.ema_dtype={ema_dtype!r}; choose one of {sorted(EMA_DTYPES)}")
        self.ema_dtype = EMA_DTYPES[ema_dtype]
        self.seed = seed
        self.generator: torch.Generator | None = None
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"method.beta must be in [0, 1), got {beta}")
        if tau <= 0:
            raise ValueError(f"method.tau must be > 0, got {tau}")
        if not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"method.warmup_ratio must be in [0, 1], got {warmup_ratio}")
        self.beta = beta
        self.tau = tau
        self.normalize = normalize
        self.warmup_ratio = warmup_ratio
        self.ema: list[torch.Tensor] = []
        self.lag = 0
        self._flat_ema: torch.Tensor | None = None
        self._dense: ParameterBlocks | None = None
        self._median_values: torch.Tensor | None = None  # the importances for the medians, kept from step to step
        self._zero_median_warned: set[str] = set()
        self.medians: list[float] = []  # per task, the median of the latest step that took one (logged)

    def setup_state(self, params: list[torch.nn.Parameter], num_tasks: int) -> None:
        self._flat_ema, self.ema = task_tensors(params, self.row_sparse, num_tasks, self.ema_dtype)
        self.lag = 0
        self._dense = ParameterBlocks([p for p, sparse in zip(params, self.row_sparse) if not sparse])
        self._median_values = None
        device = params[0].device if params else torch.device("cpu")
        self.generator = torch.Generator(device=device).manual_seed(self.seed)

    def warmup_steps(self, max_steps: int) -> int:
        return int(self.warmup_ratio * max_steps)

    def importance_ema(self) -> list[torch.Tensor]:
        """The importance EMA ``Ī`` per parameter tensor (``(T, *shape)``, in the compute dtype)."""
        factor = self.beta**self.lag
        return [e.to(self._compute_dtype()) * factor for e in self.ema]

    def combine(
        self, task_grads: list[torch.Tensor], params: list[torch.nn.Parameter], trainer: L.Trainer
    ) -> list[torch.Tensor] | None:
        """The rule over one flat block of all non-table parameters plus the touched rows of each table."""
        in_warmup = self.step < self.warmup_steps(trainer.max_steps)
        if self._flat_ema is None or self._flat_task_grads is None or task_grads is not self._task_grads:
            return self.apply_rule(task_grads, params, in_warmup, self.row_sparse)
        size = self._dense.numel
        segments, keys = [], []
        if size:
            unreached = [sum(p.numel() for p, sparse, hit in zip(params, self.row_sparse, reached)
                             if not sparse and not hit) for reached in self.reached]
            segments.append(Segment(self._dense, self._flat_task_grads[:, :size], self._flat_ema[:, :size], unreached))
            keys.append(-1)
        for i, (p, g, e, sparse) in enumerate(zip(params, task_grads, self.ema, self.row_sparse)):
            if sparse:
                segments.append(table_segment(p.detach(), g, e, [rows[i] for rows in self.filled_rows]))
                keys.append(i)
        outputs = self._rule(segments, in_warmup, keys)
        if outputs is None:
            return None
        flat, table_outputs = (outputs[0], iter(outputs[1:])) if size else (None, iter(outputs))
        combined, offset = [], 0
        for param, sparse in zip(params, self.row_sparse):
            if sparse:
                combined.append(next(table_outputs).view(param.shape))
            else:
                combined.append(flat[offset : offset + param.numel()].view(param.shape))
                offset += param.numel()
        return combined

    def apply_rule(
        self, task_grads: list[torch.Tensor], params: list[torch.Tensor], in_warmup: bool,
        row_sparse: list[bool] | None = None,
    ) -> list[torch.Tensor] | None:
        """Update the EMA (``self.ema``, per tensor) in place and return each tensor's combined gradient.

        Returns None, with the EMA untouched, when an importance is not finite (a non-finite
        task gradient, or a product that overflows).
        """
        num_tasks = task_grads[0].shape[0]
        segments = [
            table_segment(p.detach(), g, e) if sparse else
            Segment(p.detach().reshape(-1), g.reshape(num_tasks, -1), e.view(num_tasks, -1), [0] * num_tasks)
            for p, g, e, sparse in zip(params, task_grads, self.ema, row_sparse or [False] * len(params))
        ]
        outputs = self._rule(segments, in_warmup)
        return None if outputs is None else [out.view(p.shape) for out, p in zip(outputs, params)]

    def _rule(self, segments: list[Segment], in_warmup: bool, keys: list[int] | None = None) -> list[torch.Tensor] | None:
        """The TACO step over flat segments; returns one combined gradient per segment (a table's in its shape).

        First the factor of each task's importance in the EMA update (:meth:`_ema_weights`: the
        medians need every parameter). Then block by block, so that importance, EMA update,
        softmax and weighted sum of a block are computed while it is in cache: memory traffic
        is what the rule costs on a CPU. Of a table only the touched rows are worked on:
        elsewhere every task gradient is exactly zero, so the importance is zero (counted into
        the median, never written), the EMA only decays (free in the lagged storage) and the
        combined gradient is zero. ``keys`` (the callback's segments: -1 the non-table parameters,
        i a table) let the output go into task 0's buffers instead of fresh P-sized tensors.
        """
        num_tasks = segments[0].grads.shape[0]
        weights = self._ema_weights(segments, sum(self._size(segment) for segment in segments))
        if weights is None:
            return None
        weights *= self._advance_lag(segments)
        fused = self.normalize and not in_warmup
        score_scale = self.beta**self.lag / self.tau
        outputs = []
        for position, segment in enumerate(segments):
            out = self._output_rows(segment, keys[position] if keys else None) if fused else None
            for start, end, theta in segment.blocks:
                block = self._update_block(theta, segment.grads[:, start:end], segment.ema[:, start:end], weights)
                if out is not None:
                    softmax_weighted_sum(block, segment.grads[:, start:end], score_scale, out[start:end])
            if segment.index is not None:
                _, _, table_ema = segment.table
                for task_ema, task_rows in zip(table_ema, segment.ema):
                    task_ema.index_copy_(0, segment.index, task_rows.view(segment.index.numel(), *table_ema.shape[2:]))
            if out is not None:
                outputs.append(self._place(out.div_(num_tasks), segment, keys[position] if keys else None))
        if in_warmup:
            return [(s.table[1] if s.table else s.grads).sum(0).div_(num_tasks) for s in segments]
        if fused:
            return outputs
        scale = self._ema_scale()
        return [self._place(self._weighted(s.ema, s.grads, scale), s, keys[i] if keys else None)
                for i, s in enumerate(segments)]

    @staticmethod
    def _size(segment: Segment) -> int:
        """Parameters a segment stands for (a table's untouched rows included)."""
        return segment.table[0].numel() if segment.table else segment.numel

    def _advance_lag(self, segments: list[Segment]) -> float:
        """``β^-lag`` for this step's update, with ``lag`` one step further; when that would pass
        ``LAG_LIMIT`` the stored EMA (and the table rows gathered from it) is first multiplied by
        ``β^(lag + 1)`` (the real decay) and lag restarts at 0."""
        if self.beta > 0 and self.beta ** -(self.lag + 1) <= LAG_LIMIT:
            self.lag += 1
            return self.beta**-self.lag
        factor = self.beta ** (self.lag + 1)
        for ema in self.ema + [segment.ema for segment in segments if segment.index is not None]:
            decay_(ema, factor, self.generator)
        self.lag = 0
        return 1.0

    @staticmethod
    def _output_rows(segment: Segment, key: int | None) -> torch.Tensor:
        """Where a segment's combined gradient is written. In the callback (``key`` given): over task 0's
        gradient (its buffer, or its gathered table rows), which each block has used by the time its
        output is written, so no P-sized output buffer is needed. Else (direct calls) a new tensor."""
        if key is not None:
            return segment.grads[0]
        return torch.empty(segment.numel, dtype=segment.grads.dtype, device=segment.grads.device)

    def _place(self, rows_value: torch.Tensor, segment: Segment, key: int | None) -> torch.Tensor:
        """A segment's combined gradient from the values of its rows: all of them, or only the touched ones.

        A table's gradient is zero off the touched rows. In the callback it goes into task 0's
        buffer of the table, which is zero off the rows task 0 filled (a subset of the touched
        rows); ``filled_rows`` then names the rows written, so the next step clears just those.
        """
        if segment.index is None:
            if key is not None and key >= 0:
                self.filled_rows[0][key] = None  # the whole table buffer may hold the combined gradient
            return rows_value.view(segment.theta.shape) if isinstance(segment.theta, torch.Tensor) else rows_value
        theta = segment.table[0]
        if key is None:
            out = torch.zeros_like(theta)
        else:
            out = self._task_grads[key][0]
            self.filled_rows[0][key] = segment.index
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
        ``(T, P)`` tensor up to ``BATCHED_MEDIANS_UP_TO`` parameters, one reused P-vector per task
        above, and :func:`lower_medians_` selects.
        """
        num_tasks = segments[0].grads.shape[0]
        device = segments[0].grads.device
        weights = torch.full((num_tasks,), 1.0 - self.beta, dtype=torch.float64)
        pending: list[int] = []
        if self.normalize:
            middle = (total - 1) // 2  # torch.median's (lower) middle position
            known_zeros = [sum(segment.untouched[task] for segment in segments) for task in range(num_tasks)]
            pending = [task for task in range(num_tasks) if self.median_over == "nonzero" or known_zeros[task] <= middle]
        # over the non-zero entries the untouched rows need no place in the buffer: they are zeros
        length = total if self.median_over == "all" else sum(segment.numel for segment in segments)
        checked_in_buffer = len(pending) == num_tasks and length <= BATCHED_MEDIANS_UP_TO
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
        return weights.to(device=device, dtype=self._compute_dtype())

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
        batched = total <= BATCHED_MEDIANS_UP_TO
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
            self._median_values = torch.empty((rows, total), dtype=self._compute_dtype(), device=device)
        return self._median_values

    def _update_block(self, theta: torch.Tensor, grads: torch.Tensor, ema: torch.Tensor, weights: torch.Tensor
                      ) -> torch.Tensor:
        """``stored += w_t |θ ⊙ g_t|`` on one block (in place); returns the block's stored EMA in the compute dtype."""
        importance = (theta * grads).abs_()
        if ema.dtype == torch.bfloat16:
            exact = ema.float().addcmul_(importance, weights.view(-1, 1))
            ema.copy_(stochastic_round_bf16(exact, self.generator))
            return ema.float()
        return ema.addcmul_(importance, weights.view(-1, 1))

    def _weighted(self, ema: torch.Tensor, grads: torch.Tensor, ema_scale: torch.Tensor) -> torch.Tensor:
        """``Σ_t softmax_t(s_t) g_t / T`` on flat ``(T, n)`` rows of the stored EMA, ``s_t = Ī_t / scale_t / τ``
        (the un-normalised variant's scores)."""
        ema = ema.to(self._compute_dtype()) * self.beta**self.lag
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

    def log_values(self) -> dict[str, float]:
        """Per task, the median the rule took last (0 is the degenerate regime of docs/taco.md) and the share of
        parameters whose largest task weight (> 0.5) is that task's: specialisation.

        Block by block with the rule's clamped exponents: the largest weight of a parameter is
        ``1 / Σ_t e_t`` (its own ``e`` is 1), so it exceeds 0.5 exactly when ``Σ_t e_t < 2``.
        """
        num_tasks = len(self.task_names)
        factor = self.beta**self.lag / self.tau
        per_task = None if self.normalize else (factor / self._ema_scale()).view(-1, 1)
        counts = torch.zeros(num_tasks, dtype=torch.long, device=self.ema[0].device)
        total = 0
        for ema in self.ema:
            flat = ema.view(num_tasks, -1)
            for start in range(0, flat.shape[1], BLOCK):
                block = flat[:, start : start + BLOCK].to(self._compute_dtype())
                if per_task is not None:
                    block = block * per_task
                top, owner = block.max(dim=0)
                exponents = torch.sub(block, top)
                if per_task is None:
                    exponents.mul_(factor)  # scaled after the subtraction, as in the rule
                mass = exponents.clamp_(min=MIN_EXPONENT).exp_().sum(dim=0)
                counts += torch.bincount(owner[mass < 2.0], minlength=num_tasks)
            total += flat.shape[1]
        values = {f"mtl/taco/median/{n}": float(m) for n, m in zip(self.task_names, self.medians)}
        values.update({f"mtl/taco/specialised/{n}": float(c) / total for n, c in zip(self.task_names, counts.tolist())})
        return values

    def _compute_dtype(self) -> torch.dtype:
        """Arithmetic runs in the EMA's dtype, or float32 for a bf16 EMA."""
        return torch.float32 if self.ema[0].dtype == torch.bfloat16 else self.ema[0].dtype

    def _ema_scale(self) -> torch.Tensor:
        """``median_j Ī_t + eps`` per task (the scale of the scores when ``normalize`` is off)."""
        def ema_row(task: int, index: int, out: torch.Tensor) -> None:
            out.copy_(self.ema[index][task].flatten())

        like = torch.empty(0, dtype=self._compute_dtype(), device=self.ema[0].device)
        stored = task_medians(ema_row, [e[0].numel() for e in self.ema], self.ema[0].shape[0], like,
                              self.median_over == "nonzero")
        medians = stored * self.beta**self.lag
        self.medians = medians.tolist()
        return medians + EPS

    def extra_state(self) -> dict[str, Any]:
        return {"ema_stored": [e.detach().cpu().clone() for e in self.ema], "ema_lag": self.lag, "beta": self.beta,
                "generator": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        saved, lag = stored_ema(state)
        if len(saved) != len(self.ema) or any(s.shape != e.shape for s, e in zip(saved, self.ema)):
            raise ValueError("checkpoint's TACO importance EMA does not match this model's parameters")
        for ema, value in zip(self.ema, saved):
            ema.copy_(value)
        self.lag = lag
        self.generator.set_state(state["generator"])


def stored_ema(state: dict[str, Any]) -> tuple[list[torch.Tensor], int]:
    """A checkpoint's stored EMA and its lag; checkpoints written before the lagged storage hold ``Ī`` as
    ``ema`` (lag 0), so they resume exactly too."""
    if "ema_stored" in state:
        return list(state["ema_stored"]), int(state["ema_lag"])
    return list(state["ema"]), 0


def importance_ema_from_state(state: dict[str, Any]) -> list[torch.Tensor]:
    """The importance EMA ``Ī`` (float32) from a checkpoint's TACO state (stored as ``Ī · β^-lag``)."""
    saved, lag = stored_ema(state)
    factor = state["beta"] ** lag if lag else 1.0
    return [stored.float() * factor for stored in saved]
