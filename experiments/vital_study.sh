#!/usr/bin/env bash
# The vital study (issue: TACO vs naive vs task-specific, seeded, tuned, tested): docs/results-vital.md.
# Usage: experiments/vital_study.sh [--quick] [--skip-search] [Hydra overrides for every run, e.g. data.max_eval_queries=500]
#   sizes from the environment: ROOT, STEPS, VAL_EVERY, PAGES, DEV_PAGES, SEEDS, MAIN_SEEDS, LRS, ARMS ("naive taco ...")
#   1. tuning: the same trials for every arm on dev (the learning rates LRS, Hydra's basic sweeper), at STEPS, seed 13
#   2. selection: the best trial per arm → conf/experiment/<CHOSEN>/<arm>.yaml (rerun without the search: --skip-search)
#   3. final: every arm with its chosen settings, SEEDS (MAIN_SEEDS for naive, TACO, task-specific), on the test split
#   4. report: multiret study report → docs/results-vital.md (quick: into the study folder); its learning curves are the
#      final runs' own validation logs (every run validates at step 0, every VAL_EVERY steps and at STEPS)
# Every run has a fixed folder under $ROOT and runs with resume=true, so an interrupted study re-runs only what is missing.
set -euo pipefail
quick=0 search=1 EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --skip-search) search=0 ;;
    --*) echo "vital_study.sh: unknown option $arg (use --quick, --skip-search, or Hydra overrides)" >&2; exit 2 ;;
    *) EXTRA+=("$arg") ;;
  esac
done
LOGS="${MULTIRET_LOGS:-$PWD/logs}"
# The chosen settings go where Hydra finds experiments: conf/ of the installed package (the checkout's conf/ in an editable install).
CONF_DIR="$("$(dirname "$(command -v multiret)")/python" -c 'from multiret.configs import CONFIG_DIR; print(CONFIG_DIR)')"
SIZE=()  # --quick: fewer queries (a smaller sub-corpus follows)
if ((quick)); then  # one seed, 5 steps, 2 trials per arm, 100 training and 50 eval queries per task, 600 pages: the pipeline, not a result
  ROOT="${ROOT:-$LOGS/vital_study_quick}" CHOSEN=vital_study_quick REPORT="${ROOT:-$LOGS/vital_study_quick}/results-vital.md"
  PAGES="${PAGES:-600}" DEV_PAGES="${DEV_PAGES:-600}" STEPS="${STEPS:-5}" VAL_EVERY="${VAL_EVERY:-2}"
  SEEDS="${SEEDS:-13}" MAIN_SEEDS="${MAIN_SEEDS:-13}" SIZE=(data.max_train_queries=100 data.max_eval_queries=50)
else  # sized for 4 hours on 2 cores (docs/study.md): 5 seeds for naive, TACO and task-specific did not fit
  ROOT="${ROOT:-$LOGS/vital_study}" CHOSEN=vital_study REPORT=docs/results-vital.md
  PAGES="${PAGES:-null}" STEPS="${STEPS:-50}" VAL_EVERY="${VAL_EVERY:-10}"
  SEEDS="${SEEDS:-13,14,15}" MAIN_SEEDS="${MAIN_SEEDS:-13,14,15}"
fi
DEV_PAGES="${DEV_PAGES:-2000}"  # tuning searches a sub-corpus (every gold page of the sampled queries plus random ones)
LRS="${LRS:-2e-4,5e-4}"  # the search, the same for every arm: the learning rate (2 trials; docs/study.md); method knobs at their defaults
# Fixed for every arm: MiniLM, 12 queries per step (4 per task), bfloat16 corpus encoding (index.precision: 2x faster, the
# same rankings to within a query or two, docs/benchmarks.md), CSV logs (task-gradient cosines every 5 steps, validation
# scores every VAL_EVERY steps: the learning curves), no periodic checkpoints, and the overrides given to the script.
# Every run is evaluated at its last step (eval_checkpoint=last: the step budget is fixed; the final runs validate on
# the test split, where choosing best.ckpt would choose on test). The final runs search the full corpus.
# TACO's β = 0.9: its EMA then averages over ~10 steps, a fifth of the 50-step budget (the reference's 0.999 is for 20k steps).
VALIDATION=("trainer.val_check_interval=$VAL_EVERY" eval_checkpoint=last)  # also given to the final runs: settings chosen before them lack it
COMMON=(data=vital model=minilm logger=csv "trainer.max_steps=$STEPS" "${VALIDATION[@]}" resume=true index.precision=bfloat16
        method.log_every_n_steps=5
        callbacks.model_checkpoint.every_n_train_steps=100000 ${SIZE[@]+"${SIZE[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})
TASKS="[vital-qa],[vital-el],[vital-clue]"
declare -A ARM=(  # what each arm is
  [naive]="method=naive"
  [taco]="method=taco method.beta=0.9"
  [taco_published]="method=taco_published method.beta=0.9"
  [pcgrad]="method=pcgrad"
  [gradnorm]="method=gradnorm"
  [cgd]="method=cgd"
  [uncertainty]="method=uncertainty"
  [naive_noprompt]="method=naive prompt=none"
  [taco_noprompt]="method=taco method.beta=0.9 prompt=none"
  [task_specific]="method=naive job_type=task-specific"
)
read -r -a ARMS <<< "${ARMS:-naive taco task_specific taco_published pcgrad gradnorm cgd uncertainty naive_noprompt taco_noprompt}"
start=$(date +%s)
mkdir -p "$ROOT"  # each invocation, finished or interrupted, adds "<start> <end> <seconds>" (UTC) to invocations.log
trap 'echo "$(date -u -d "@$start" +%FT%TZ) $(date -u +%FT%TZ) $(( $(date +%s) - start ))" >> "$ROOT/invocations.log"' EXIT
trap 'exit 143' TERM INT  # an interrupted invocation is logged too

per_task() { [[ "$1" == task_specific ]] && echo "data.task_names=$TASKS" || true; }

if ((search)); then  # 1. tuning on dev, 2. selection
  for arm in "${ARMS[@]}"; do
    # shellcheck disable=SC2046,SC2086
    multiret train -m task_name="$arm" ${ARM[$arm]} "${COMMON[@]}" "data.corpus_max_pages=$DEV_PAGES" "optimizer.lr=$LRS" $(per_task "$arm") \
      data.eval_split=dev seed=13 "hydra.sweep.dir=$ROOT/tune/$arm"
  done
  multiret study select "$ROOT/tune" --out "$CONF_DIR/experiment/$CHOSEN"
fi

for arm in "${ARMS[@]}"; do  # 3. the test split, with the chosen settings, every seed
  seeds=$SEEDS
  [[ "$arm" == naive || "$arm" == taco || "$arm" == task_specific ]] && seeds=$MAIN_SEEDS
  # shellcheck disable=SC2046
  multiret train -m "experiment=$CHOSEN/$arm" $(per_task "$arm") "seed=$seeds" resume=true data.eval_split=test "data.corpus_max_pages=$PAGES" \
    "${VALIDATION[@]}" "hydra.sweep.dir=$ROOT/final/$arm"
done

echo "study runs: $(( $(date +%s) - start )) s this invocation"
multiret study report "$ROOT" --out "$REPORT" --pair naive naive_noprompt --pair taco taco_noprompt --pair taco taco_published  # 4. the page (tables, tests, curves, specialisation, cosines, times)
echo "report: $REPORT"
