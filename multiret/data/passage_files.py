"""Passage TSV files in the layouts users have, read with the csv module as the TACO reference reads them.

Three layouts, told apart from the first line or named by ``data.passage_layout`` /
``--passage-layout``:

* ``kilt``: six columns ``id, text, wikipedia_title, wikipedia_id`` and two more (KILT's
  passage split, the file the reference's KILT scripts read); a first line whose fourth field
  is not an integer is a header.
* ``dpr``: three columns ``id, text, title`` (DPR's ``psgs_w100.tsv``); a first line
  ``id, text, title`` is a header. There is no page id: the title identifies the page, and
  gold provenance is matched by its ``title``.
* ``named``: a header naming at least ``id, text, title, wikipedia_id`` (any order, extra
  columns ignored).

Fields follow the csv module's tab dialect with ``"`` quoting (a quoted field may hold tabs,
newlines and ``""`` for a quote), as ``csv.reader(f, delimiter="\\t")`` in the reference.
Errors name the file and the line: undecodable UTF-8, a row of the wrong width, a field over
the csv size limit (an unclosed quote, or one field that long), an unknown layout.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from multiret.data.jsonl import DataFormatError

log = logging.getLogger(__name__)

AUTO = "auto"
CORPUS_COLUMNS = ("id", "text", "title", "wikipedia_id")
LAYOUTS = {
    "kilt": "6 columns: id, text, wikipedia_title, wikipedia_id + 2 more (KILT's passage file), header optional",
    "dpr": "3 columns: id, text, title (DPR's psgs_w100.tsv), header optional",
    "named": f"a header naming at least {', '.join(CORPUS_COLUMNS)} (extra columns ignored)",
}
FIELD_LIMIT = 1 << 24  # characters per field; a KILT passage has ~600, so only a runaway quote gets near it


@dataclass(frozen=True)
class Layout:
    """Where a layout keeps each column; ``page`` None means the title identifies the page."""

    name: str
    width: int
    header: bool
    id: int
    text: int
    title: int
    page: int | None

    @property
    def page_key(self) -> str:
        """The provenance field gold pages are matched by: ``wikipedia_id``, or ``title`` for a file without page ids."""
        return "title" if self.page is None else "wikipedia_id"


class PassageRow(NamedTuple):
    """One passage and the line its record starts on (a tuple: millions are made while a store is built)."""

    line: int
    id: str
    text: str
    title: str
    page: str


def _expected() -> str:
    return "; ".join(f"{name} ({text})" for name, text in LAYOUTS.items())


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's lines as text (a leading BOM dropped); undecodable bytes fail naming their line."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            yield from handle
        except UnicodeDecodeError:
            raise DataFormatError(_not_utf8(path)) from None


def _not_utf8(path: Path) -> str:
    """Where the first undecodable byte is (found again line by line: only an error pays for this pass)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return (f"{path}:{number}: not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                        "convert the file to UTF-8, e.g. with iconv -f latin1 -t utf-8")
    return f"{path}: not UTF-8; convert the file to UTF-8"


def _is_integer(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def detect_layout(path: Path, first: list[str], requested: str = AUTO) -> Layout:
    """The layout of a file whose first row is ``first`` (``requested`` names it, or ``auto``)."""
    if requested != AUTO and requested not in LAYOUTS:
        raise ValueError(f"passage layout {requested!r} is unknown; choose {AUTO} or one of {', '.join(LAYOUTS)}")
    names = [field.strip().lower() for field in first]
    if requested in (AUTO, "named") and set(CORPUS_COLUMNS) <= set(names):
        return Layout("named", len(first), True, *(names.index(c) for c in CORPUS_COLUMNS))
    if requested in (AUTO, "kilt") and len(first) == 6:
        return Layout("kilt", 6, not _is_integer(first[3].strip()), 0, 1, 2, 3)
    if requested in (AUTO, "dpr") and len(first) == 3:
        return Layout("dpr", 3, names == ["id", "text", "title"], 0, 1, 2, None)
    wanted = f"layout {requested}: {LAYOUTS[requested]}" if requested != AUTO else f"one of the layouts {_expected()}"
    shown = first if len(repr(first)) < 200 else f"{repr(first)[:200]}…"
    raise DataFormatError(
        f"{path}:1: {len(first)} tab-separated field(s) {shown} match no passage layout; expected {wanted}. "
        "Fix the file, or name its layout with data.passage_layout / --passage-layout"
    )


def iter_passages(path: str | os.PathLike[str], layout: str = AUTO) -> Iterator[PassageRow]:
    """Yield every passage of a TSV file in file order (a header row is skipped)."""
    path = Path(path)
    for row in _rows(path, layout):
        if isinstance(row, PassageRow):
            yield row


def read_layout(path: str | os.PathLike[str], layout: str = AUTO) -> Layout:
    """The layout of a passage file, from its first line."""
    path = Path(path)
    first = next(_rows(path, layout), None)
    if not isinstance(first, Layout):
        raise DataFormatError(f"{path}: empty passage file (expected {_expected()})")
    return first


def _rows(path: Path, requested: str) -> Iterator[Layout | PassageRow]:
    """The layout (first), then the passages, with every csv error turned into one naming the line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: passage file not found (expected {_expected()})")
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    reader = csv.reader(_decoded_lines(path), delimiter="\t", quotechar='"', doublequote=True, strict=True)
    layout: Layout | None = None
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader, None)
        except csv.Error as error:
            raise DataFormatError(_csv_error(path, start, error, reader.line_num > start)) from None
        if fields is None:
            return
        if not fields:
            continue
        if layout is None:
            layout = detect_layout(path, fields, requested)
            yield layout
            if layout.header:
                log.debug("%s: layout %s, header %s", path, layout.name, fields)
                continue
        if len(fields) != layout.width:
            raise DataFormatError(
                f"{path}:{start}: expected {layout.width} tab-separated fields, got {len(fields)} (layout "
                f"{layout.name}: {LAYOUTS[layout.name]}); a field holding a tab or a newline must be "
                'quoted ("...", with "" for a quote inside it)'
            )
        title = fields[layout.title]
        page = (title if layout.page is None else fields[layout.page]).strip()
        yield PassageRow(start, fields[layout.id], fields[layout.text], title, page)


def _csv_error(path: Path, line: int, error: csv.Error, spans_lines: bool) -> str:
    """The one line for a csv error of the row starting at ``line``; ``spans_lines``: the row ran on past its own line."""
    if "field larger than field limit" in str(error) and not spans_lines:
        return (f"{path}:{line}: a field of this line is longer than {csv.field_size_limit():,} characters, the csv "
                "size limit; split the passage into shorter ones (an encoder reads only its first few hundred tokens)")
    if "field larger than field limit" in str(error):
        return (f"{path}:{line}: a field is longer than {csv.field_size_limit():,} characters, the csv size limit; "
                "usually a quote opened and never closed (a field starting with \" runs to the next lone \"): "
                "quote such fields completely, doubling the quotes inside them")
    return f"{path}:{line}: {error}; fields are tab-separated, quoted with \" and \"\" for a quote inside a quoted field"
