"""``multiret kilt-eval``: KILT page-level retrieval metrics of a guess file against a gold file."""

from __future__ import annotations

import argparse
import json
import sys

from multiret.errors import USER_ERRORS, one_line
from multiret.eval.kilt_metrics import evaluate_kilt_files

PROG = "multiret kilt-eval"


def parse_ks(text: str) -> list[int]:
    """Parse ``"1,5,20"`` into positive integers; argparse turns the error into a usage message."""
    try:
        ks = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError(f"every k must be a positive integer, got {text!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score a KILT guess file against a KILT gold file at the level of Wikipedia pages. "
        "Rprec, precision@k, recall@k and success_rate@k equal those of KILT's eval_retrieval.py "
        "(rank_keys=wikipedia_id) under the same names; its entity_in_input and *_in_context@k "
        "keys are left out (they need the passages' text). Files may be '-' (stdin) or pipes.",
    )
    parser.add_argument("--gold", required=True, help="gold KILT jsonl file, or - for stdin")
    parser.add_argument("--guess", required=True, help="guess KILT jsonl file (one output with provenance per id), or - for stdin")
    parser.add_argument(
        "--ks", type=parse_ks, default=[1, 5, 10, 20], help="comma-separated cut-offs k (default: 1,5,10,20)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def format_table(result: dict[str, float]) -> str:
    """Metric names left-aligned, values right-aligned with four decimals."""
    width = max(len(name) for name in result)
    return "\n".join(f"{name:<{width}}  {value:.4f}" for name, value in result.items())


def main(argv: list[str] | None = None) -> int:
    """Run the command; input errors print one ``error:`` line to stderr and return 2."""
    args = build_parser().parse_args(argv)
    try:
        result = evaluate_kilt_files(args.gold, args.guess, args.ks, warn=lambda text: print(f"{PROG}: warning: {text}", file=sys.stderr))
    except USER_ERRORS as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result))
    return 0
