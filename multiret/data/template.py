"""The one place a passage becomes model or BM25 input: its title and text filled into a template.

The TACO reference encodes every KILT passage as ``Title: <title> Text: <text>`` (its KILT
scripts' ``--doc_template``) in training, corpus encoding and mining. Every consumer here
(training positives and negatives, corpus encoding, the BM25 indexes and their negatives,
mining) reads passages through ``passage_text`` of the corpus or store, which calls
:func:`format_passage`, so one setting (``data.passage_template``) governs them all.
"""

from __future__ import annotations

from string import Formatter

DEFAULT_PASSAGE_TEMPLATE = "Title: {title} Text: {text}"
FIELDS = ("title", "text")


def check_template(template: str | None, setting: str = "data.passage_template") -> str | None:
    """Return ``template`` if it is usable: ``{text}`` at least once, no placeholder but ``{title}`` and ``{text}``.

    ``None`` means the text alone (no title); errors name ``setting``, where the template came from.
    """
    if template is None:
        return None
    try:
        names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ValueError(f"{setting} {template!r} is not a valid template ({error}); "
                         "write literal braces as {{ and }}") from None
    unknown = sorted(names - set(FIELDS))
    if unknown or "text" not in names:
        raise ValueError(f"{setting} {template!r} must contain {{text}} and may contain {{title}}, "
                         f"nothing else (found {sorted(names)}); e.g. {DEFAULT_PASSAGE_TEMPLATE!r}")
    return template


def format_passage(template: str | None, title: str, text: str) -> str:
    """The string a passage encoder and BM25 see for one passage (the text alone when ``template`` is None)."""
    if template is None:
        return text
    return template.format(title=title, text=text)
