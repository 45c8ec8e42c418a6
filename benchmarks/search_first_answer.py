"""How long ``multiret search`` takes to its first answer, and where the time goes.

    python benchmarks/search_first_answer.py RUN --task qa --query "a question" [--rounds 5]

RUN is any run folder with an index (a tiny test run, or the demo's). Each round starts
``multiret search RUN --task T QUERY`` as a new process and times it from start to exit (one
query, so the exit follows the first answer); one more round in this process splits the time
into loading the model (``Retriever.from_run``), opening the corpus and the memory-mapped index,
the first search and a second one. Prints one JSON object: median seconds per part over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def command_seconds(run: str, task: str, query: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "multiret.cli", "search", run, "--task", task, query],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def parts_seconds(run: str, task: str, query: str) -> dict[str, float]:
    from multiret.experiment.retriever import Retriever

    times = {}
    start = time.perf_counter()
    retriever = Retriever.from_run(run)
    times["load_model"] = time.perf_counter() - start
    start = time.perf_counter()
    retriever.open_index(task)
    times["open_corpus_and_index"] = time.perf_counter() - start
    for name in ("first_search", "second_search"):
        start = time.perf_counter()
        retriever.search([query], task, 10)
        times[name] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--task", required=True)
    parser.add_argument("--query", default="what is this about")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    commands = [command_seconds(args.run, args.task, args.query) for _ in range(args.rounds)]
    rounds = [parts_seconds(args.run, args.task, args.query) for _ in range(args.rounds)]
    print(json.dumps({
        "command_to_first_answer_s": round(statistics.median(commands), 3),
        **{f"{part}_s": round(statistics.median(r[part] for r in rounds), 4) for part in rounds[0]},
        "rounds": args.rounds,
    }))


if __name__ == "__main__":
    main()
