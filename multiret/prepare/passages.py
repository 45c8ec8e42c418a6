"""Building a passage store (read by :class:`multiret.data.store.PassageStore`) from a passage TSV."""

from __future__ import annotations

import os
from pathlib import Path

from multiret.data.passage_files import AUTO, iter_passages, read_layout
from multiret.data.store_writer import write_passage_store


def build_passage_store(
    tsv: str | os.PathLike[str], out: str | os.PathLike[str], show_progress: bool = True, layout: str = AUTO,
) -> dict:
    """Stream a passage TSV (a layout of :mod:`multiret.data.passage_files`) into a store folder.

    Writes into ``<out>.tmp`` and renames it to ``out`` when complete, so an interrupted build
    leaves no half store. Fails naming ``file:line`` on a malformed row, a non-numeric page id
    or a duplicate passage id (with both lines). A file without page ids (``dpr``) keys its
    pages by title. Returns the store's metadata (layout, passages, pages, bytes).
    """
    tsv = Path(tsv)
    found = read_layout(tsv, layout)
    return write_passage_store(iter_passages(tsv, layout), Path(out), tsv, found.page_key, {"layout": found.name}, show_progress)
