"""``multiret search``: ask a run's index questions from the command line (arguments, or standard input)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence

from multiret.experiment.retriever import CHECKPOINTS, Hit, Retriever, hits_as_dicts

PROG = "multiret search"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Search a run's index with its trained model.")
    parser.add_argument("run", metavar="RUN", help="a run folder with an index (or a .ckpt in its checkpoints/)")
    parser.add_argument("queries", metavar="QUERY", nargs="*", help="queries; none: one per line from standard input")
    parser.add_argument("--task", required=True, help="the task whose prompt the queries get (one of the run's tasks)")
    parser.add_argument("-k", type=int, default=10, help="pages per query (default 10)")
    parser.add_argument("--json", action="store_true", help="one JSON object per query: {query, hits: [...]}")
    parser.add_argument("--checkpoint", default="indexed", choices=CHECKPOINTS,
                        help="the run's checkpoint: indexed (default: the one its index was built with), best or last")
    return parser


def format_hits(query: str, hits: Sequence[Hit]) -> str:
    """The query, then one tab-separated line per hit: rank, score, title, page id."""
    return "\n".join([f"# {query}", *(f"{h.rank}\t{h.score:.4f}\t{h.title}\t{h.page_id}" for h in hits)])


def read_queries(given: Sequence[str]) -> Iterator[str]:
    """The queries given, or each non-blank line of standard input as it arrives."""
    if given:
        yield from given
        return
    for line in sys.stdin:
        if line.strip():
            yield line.strip()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # queries may come after the options
    retriever = Retriever.from_run(args.run, args.checkpoint)
    retriever.open_index(args.task)  # an unknown task or a missing index fails before reading any query
    for query in read_queries(args.queries):
        (hits,) = retriever.search([query], args.task, args.k)
        print(json.dumps({"query": query, "hits": hits_as_dicts(hits)}) if args.json else format_hits(query, hits),
              flush=True)
    return 0
