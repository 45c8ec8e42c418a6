"""Figures for the analysis commands: headless matplotlib, files written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multiret.atomic import atomic_path


def new_figure(width: float, height: float = 4.0) -> tuple[Any, Any]:
    """A figure and its axes on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_figure(figure: Any, path: Path) -> None:
    """Lay out, write through a temporary file and a rename, and free the figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)
