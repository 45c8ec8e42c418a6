"""Line counting for the prepare steps."""

from __future__ import annotations

import os
from pathlib import Path


def count_records(path: str | os.PathLike[str]) -> int:
    """Number of non-blank lines of a JSON-lines file (for progress totals and down-sampling)."""
    with Path(path).open("rb") as handle:
        return sum(1 for line in handle if line.strip())
