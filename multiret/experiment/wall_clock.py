"""Wall time of each stage of a job, kept in its run folder so that studies can report what every arm cost."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from multiret.atomic import atomic_write_text

FILE = "wall_seconds.json"


class WallClock:
    """Seconds per stage (``train``, ``index``, ``evaluate``) and in all, since the clock was made."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start

    def write(self, folder: Path) -> None:
        """``<folder>/wall_seconds.json``; a resumed job records only its last attempt."""
        total = time.perf_counter() - self.started
        atomic_write_text(folder / FILE, json.dumps({**self.seconds, "total": total}, indent=2))
