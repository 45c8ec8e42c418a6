"""An order-keeping map over worker processes, each holding state it builds once (an open store, a mapped index).

Worker processes are spawned, not forked: the caller may hold threads (PyTorch's, a progress
bar's) that a fork would copy in an undefined state. With one worker nothing is spawned and
the same functions run in this process, so the one-process result is the reference that the
parallel one must equal.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
MapFn = Callable[[Iterable[Any]], Iterator[Any]]

_STATE: tuple[Callable[[Any, Any], Any], Any] | None = None


def resolve_workers(workers: int | None) -> int:
    """``None`` means every core (``os.cpu_count()``); anything else must be a positive count."""
    if workers is None:
        return os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers={workers}: expected a positive number of processes (or None for every core)")
    return workers


def _init(fn: Callable[[Any, Any], Any], make: Callable[..., Any], args: tuple) -> None:
    global _STATE
    _STATE = (fn, make(*args))


def _call(item: Any) -> Any:
    assert _STATE is not None, "worker used before its initializer ran"
    fn, state = _STATE
    return fn(state, item)


@contextmanager
def ordered_map(fn: Callable[[Any, Item], Result], make: Callable[..., Any], args: tuple, workers: int) -> Iterator[MapFn]:
    """Yield ``map_(items)``: ``fn(state, item)`` per item, results in item order, ``state = make(*args)`` once per worker.

    ``fn`` and ``make`` must be module-level functions (spawned workers import them by name).
    """
    if workers <= 1:
        state = make(*args)
        yield lambda items: (fn(state, item) for item in items)
        return
    with multiprocessing.get_context("spawn").Pool(workers, _init, (fn, make, args)) as pool:
        yield lambda items: pool.imap(_call, items)
