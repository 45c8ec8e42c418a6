"""`multiret` command line: train, index, evaluate (Hydra apps), kilt-eval, demo, analyze, study, compare."""

from __future__ import annotations

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
  compare [RUN_OR_SWEEP ...] [--wandb ENTITY/PROJECT] [--group G] [--out DIR]   multitask vs task-specific table (markdown + PNG)
  prepare kilt --kilt-dir DIR --passages TSV --out DIR [...]   KILT's eight tasks → a folder data=kilt reads
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
    if command == "kilt-eval":
        from multiret.eval.kilt_eval_cli import main as kilt_eval

        return kilt_eval(rest)
    if command == "demo":
        from multiret.experiment.demo import main as demo

        return demo(rest)
    if command == "analyze" and rest[:1] == ["specialization"]:
        from multiret.experiment.analyze import main as specialization

        return specialization(rest[1:])
    if command == "study" and rest[:1] == ["select"]:
        from multiret.experiment.study import main as study_select

        return study_select(rest[1:])
    if command == "study" and rest[:1] == ["report"]:
        from multiret.experiment.study_report import main as study_report

        return study_report(rest[1:])
    if command == "compare":
        from multiret.eval.compare import main as compare

        return compare(rest)
    if command == "prepare" and rest[:1] == ["kilt"]:
        from multiret.prepare.pipeline import main as prepare_kilt

        return prepare_kilt(rest[1:])
    if command == "convert" and rest[:1] == ["t5-fp16"]:
        from multiret.model.t5_fp16 import main as convert_t5

        return convert_t5(rest[1:])
    print(f"multiret: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
