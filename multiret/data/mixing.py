"""Per-task batch sizes by temperature mixing (TACO, after T5's multitask mixing)."""

from __future__ import annotations

from collections.abc import Sequence

from multiret.errors import UserError


def temperature_rates(sizes: Sequence[int], temperature: float) -> list[float]:
    """Mixing rates ``r_t ∝ (n_t / Σn)^(1/temperature)``; temperature 1 is proportional, ∞ uniform."""
    if temperature <= 0:
        raise UserError(f"mixing temperature must be > 0, got {temperature}")
    if not sizes or min(sizes) <= 0:
        raise UserError(f"every task needs at least one training example, got sizes {list(sizes)}")
    total = sum(sizes)
    powered = [(n / total) ** (1.0 / temperature) for n in sizes]
    norm = sum(powered)
    return [p / norm for p in powered]


def task_batch_sizes(batch_size: int, sizes: Sequence[int], temperature: float = 4.0) -> list[int]:
    """Split ``batch_size`` queries over tasks: one each, the rest by largest remainder of the rates.

    Every step must see every task (the TACO rule needs a gradient from each), hence the
    minimum of one.
    """
    if batch_size < len(sizes):
        raise UserError(
            f"data.batch_size={batch_size} is smaller than the number of tasks ({len(sizes)}); "
            "every batch must hold every task"
        )
    rates = temperature_rates(sizes, temperature)
    spare = batch_size - len(sizes)
    raw = [r * spare for r in rates]
    counts = [int(x) for x in raw]
    by_remainder = sorted(range(len(sizes)), key=lambda t: (counts[t] - raw[t], t))
    for t in by_remainder[: spare - sum(counts)]:
        counts[t] += 1
    return [c + 1 for c in counts]
