"""`multiret` command line: train, index, evaluate (Hydra apps), kilt-eval, demo, analyze, study, compare."""

from __future__ import annotations

import importlib
import os
import sys

from multiret.errors import UserErrorExit, full_traceback_wanted, one_line, user_error_in

USAGE = """usage: multiret <command> [args]

commands:
  train [overrides]      train, index and evaluate (Hydra), e.g. multiret train experiment=vital_taco
  index [overrides]      encode the corpus into a FAISS index (ckpt_path=... for a trained model)
  evaluate [overrides]   index and score the eval split with KILT page-level metrics
  episodes [overrides]   ANCE-style hard-negative episodes, resumable, e.g. multiret episodes experiment=vital_ance
  kilt-eval --gold G --guess P [--ks 1,5,20] [--json]   KILT retrieval metrics of a guess file
  demo [--full]          the whole pipeline on the embedded vital benchmark
  analyze specialization CKPT [CKPT ...]   per-parameter task-specialisation entropy (PNG + JSON)
  study select ROOT/tune [--out DIR]   each arm's best dev trial → conf/experiment/vital_study/<arm>.yaml + selection.json
  study report ROOT [--out PAGE] [--figures DIR]   a study's results page (docs/results-vital.md) from its run folders
  study collect ROOT --out DIR   the small files the page needs (no checkpoints, no machine paths), which study report reads
  compare [RUN_OR_SWEEP ...] [--wandb ENTITY/PROJECT] [--group G] [--out DIR]   multitask vs task-specific table (markdown + PNG)
  prepare kilt --kilt-dir DIR --passages TSV --out DIR [...]   KILT's eight tasks → a folder data=kilt reads
  export RUN_OR_CKPT --out DIR [--format sentence-transformers|hf] [--checkpoint best|last]   the trained model for use elsewhere
  search RUN --task T [-k 10] [--json] [QUERY ...]   a run's index answers queries (stdin, one a line, when none given)
  prepare dpr --files DIR --passages TSV --out DIR [--kilt-dev DIR] [...]   the reference's multikilt DPR files → a folder data=kilt reads
  convert t5-fp16 SRC DST   rescale a T5 v1.0 checkpoint so that it trains in fp16 without overflow
"""

DEFAULT_STAGES = {"train": None, "index": "stages=[index]", "evaluate": "stages=[index,evaluate]"}


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (see :mod:`multiret.errors`) prints one line to stderr and returns 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # multiret never downloads; set before any command imports huggingface_hub
    try:
        return dispatch(command, rest)
    except UserErrorExit as exit_:  # raised out of a Hydra app, past Hydra's traceback printer
        message = exit_.message
    except Exception as error:
        user_error = user_error_in(error)
        if user_error is None or full_traceback_wanted():
            raise
        message = one_line(user_error)
    print(f"multiret {command}: error: {message}", file=sys.stderr)
    return 2


# Plain commands: (command, subcommand or None) → the module whose main(argv) runs it (imported only when called)
PLAIN_COMMANDS = {
    ("kilt-eval", None): "multiret.eval.kilt_eval_cli",
    ("demo", None): "multiret.experiment.demo",
    ("analyze", "specialization"): "multiret.experiment.analyze",
    ("study", "select"): "multiret.report.study",
    ("study", "report"): "multiret.report.study_report",
    ("study", "collect"): "multiret.report.study_collect",
    ("compare", None): "multiret.report.compare",
    ("prepare", "kilt"): "multiret.prepare.pipeline",
    ("prepare", "dpr"): "multiret.prepare.dpr",
    ("convert", "t5-fp16"): "multiret.model.t5_fp16",
    ("export", None): "multiret.experiment.export",
    ("search", None): "multiret.experiment.search",
}


def dispatch(command: str, rest: list[str]) -> int:
    """Run ``command`` with its arguments ``rest``; returns the exit status."""
    if command in DEFAULT_STAGES:
        from multiret.experiment import run

        stages = DEFAULT_STAGES[command]
        if stages and not any(a.startswith(("stages=", "+stages=")) for a in rest):
            rest = [stages, *rest]
        sys.argv = [run.__file__, *rest]  # a runnable script: trainer=ddp starts the other processes by re-running argv
        run.main()
        return 0
    if command == "episodes":
        from multiret.experiment import episodes

        if not any(a.startswith(("hydra.run.dir=", "paths.output_dir=")) for a in rest):
            rest = [episodes.RUN_DIR_OVERRIDE, *rest]  # a fixed folder, so that re-running the command resumes
        sys.argv = [episodes.__file__, *rest]  # a runnable script, as for train (trainer=ddp re-runs argv)
        episodes.main()
        return 0
    subcommand = rest[0] if rest else None
    for key, argv in (((command, None), rest), ((command, subcommand), rest[1:])):
        if key in PLAIN_COMMANDS:
            return importlib.import_module(PLAIN_COMMANDS[key]).main(argv)
    print(f"multiret: unknown command {' '.join(a for a in (command, subcommand) if a)!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
