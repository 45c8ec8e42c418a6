#!/usr/bin/env bash
# The vital study, v2 (issue #27): naive vs TACO vs task-specific training on the embedded vital benchmark; docs/study.md.
# Usage: experiments/vital_study.sh [--pilot | --quick | --estimate] [--skip-search] [Hydra overrides for every run]
#   --pilot     naive alone on dev for PILOT_STEPS steps, validating every PILOT_EVERY: prints the step where the dev score
#               plateaus (its last quarter within 0.005 of its best, multiret.experiment.plateau); the study's STEPS comes from it
#   --quick     every stage at the size of a smoke test (the pipeline, not a result): one seed, 4 steps, 600 pages, LRS=3e-4
#   --estimate  print the projected wall clock of the study at these sizes and stop
#   sizes from the environment: ROOT, STEPS, VAL_EVERY, LAYERS, PAGES, DEV_PAGES, SEEDS, MAIN_SEEDS, LRS, ARMS ("naive taco ...")
# Stages (every run in a fixed folder under $ROOT, resume=true: an interrupted study re-runs only what is missing):
#   1. tune A: every arm at every learning rate of LRS (the same log-spaced grid for every arm), its knob at its default;
#      dev split, seed 13, a DEV_PAGES sub-corpus; `multiret study select` then gives each arm's learning rate
#   2. tune B: every arm at its chosen rate with each of its two knob alternatives (KNOBS below), so every arm has
#      |LRS| + 2 trials; `multiret study select` → conf/experiment/<CHOSEN>/<arm>.yaml, flagging a choice at a grid's edge
#   3. final: every arm with its chosen settings, SEEDS (MAIN_SEEDS for naive, TACO and both task-specific arms), scored
#      on the whole test split (data.max_eval_queries=null: every seed on the same queries) over the full corpus; the
#      curves validate on dev (data.validation_split=dev) every VAL_EVERY steps, so nothing is chosen on test
#   4. report: multiret study collect → docs/results-vital/data/, multiret study report from it → docs/results-vital.md
#      (quick: both into the study folder)
# Budget (≤ 2.5 h on the idle 2-core machine, one working session; --quick ≤ 30 min): `--estimate` prints it from the
# per-step and per-job costs below. They are projections: the 6-layer MiniLM's measured costs (docs/study.md: a step of
# 12 queries 1.7 s, TACO +0.2 s; a tuning job's fixed part ~40 s, a final job's ~100 s, most of it encoding the corpus)
# times 0.55 for LAYERS=3. At the 6-layer MiniLM the same study projects to about 4.5 h, so the study keeps the first
# 3 of MiniLM's 6 layers (model.encoder.num_layers=3: about half the encoder's compute). With the defaults (STEPS=60,
# 3 learning rates, 5 main seeds, 3 for the other arms) --estimate prints 2.4 h: tune 0.9 h, final 1.5 h.
set -euo pipefail
quick=0 search=1 pilot=0 estimate=0 EXTRA=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --pilot) pilot=1 ;;
    --estimate) estimate=1 ;;
    --skip-search) search=0 ;;
    --*) echo "vital_study.sh: unknown option $arg (use --pilot, --quick, --estimate, --skip-search, or Hydra overrides)" >&2; exit 2 ;;
    *) EXTRA+=("$arg") ;;
  esac
done
LOGS="${MULTIRET_LOGS:-$PWD/logs}"
SIZE=()  # --quick: fewer queries (a smaller sub-corpus follows)
FINAL_QUERIES=(data.max_eval_queries=null)  # the whole test split: the same queries for every seed and arm
if ((quick)); then
  ROOT="${ROOT:-$LOGS/vital_study_quick}" CHOSEN=vital_study_quick REPORT="${ROOT:-$LOGS/vital_study_quick}/results-vital.md"
  DATA="${ROOT:-$LOGS/vital_study_quick}/data"
  PAGES="${PAGES:-600}" DEV_PAGES="${DEV_PAGES:-600}" STEPS="${STEPS:-4}" VAL_EVERY="${VAL_EVERY:-2}" LRS="${LRS:-3e-4}"
  SEEDS="${SEEDS:-13}" MAIN_SEEDS="${MAIN_SEEDS:-13}" SIZE=(data.max_train_queries=100 data.max_eval_queries=50) FINAL_QUERIES=()
else
  ROOT="${ROOT:-$LOGS/vital_study}" CHOSEN=vital_study REPORT=docs/results-vital.md DATA=docs/results-vital/data
  # STEPS=40 is the budget's, not the data's: the first pilot (docs/study.md) rose until about step 210; re-plan first
  PAGES="${PAGES:-null}" STEPS="${STEPS:-40}" VAL_EVERY="${VAL_EVERY:-$(( (STEPS + 3) / 4 ))}"
  SEEDS="${SEEDS:-13,14,15}" MAIN_SEEDS="${MAIN_SEEDS:-13,14,15,16,17}"
fi
DEV_PAGES="${DEV_PAGES:-2000}"  # tuning searches a sub-corpus (every gold page of the sampled queries plus random ones)
LRS="${LRS:-1e-4,3e-4,1e-3}"  # half a decade apart, the same for every arm: 2e-4 won at 50 steps in v1, 5e-5 was 0.1 below it
LAYERS="${LAYERS:-3}"  # MiniLM's first layers kept (the budget above); LAYERS=6 is the whole model
PILOT_STEPS="${PILOT_STEPS:-300}" PILOT_EVERY="${PILOT_EVERY:-15}" PILOT_LR="${PILOT_LR:-3e-4}"
BUDGET_H=2.5; ((quick)) && BUDGET_H=0.5  # hours: one working session (quick: a check)
LOG_EVERY=5  # task-gradient norms and cosines (embedding tables left out, the same-task reference beside them)
# Fixed for every arm: MiniLM's first LAYERS layers, 12 queries per step (4 per task), bfloat16 corpus encoding
# (index.precision, docs/benchmarks.md), CSV logs, no periodic checkpoints, evaluation of the last step (eval_checkpoint=last:
# the step budget is fixed), and the overrides given to the script.
COMMON=(data=vital model=minilm "model.encoder.num_layers=$LAYERS" logger=csv "trainer.max_steps=$STEPS" eval_checkpoint=last
        resume=true index.precision=bfloat16 "method.log_every_n_steps=$LOG_EVERY" "trainer.log_every_n_steps=$LOG_EVERY"
        callbacks.model_checkpoint.every_n_train_steps=100000 ${SIZE[@]+"${SIZE[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})
# Tuning is scored by its evaluation (eval/metrics.json), so its validation (step 0 and the end) is cut to a token size;
# the final runs set it back (settings chosen in tuning carry these values) and validate every VAL_EVERY steps on dev.
TUNING=(data.eval_split=dev seed=13 "trainer.val_check_interval=$STEPS" callbacks.dev_validation.max_queries=5
        callbacks.dev_validation.pool_sample=20)
CURVES=("trainer.val_check_interval=$VAL_EVERY" data.validation_split=dev callbacks.dev_validation.max_queries=50
        callbacks.dev_validation.pool_sample=500)
TASKS="[vital-qa],[vital-el],[vital-clue]"
declare -A ARM=(  # what each arm is; the two task-specific arms differ in what they hold equal to a multitask run
  [naive]="method=naive"
  [taco]="method=taco"
  [taco_published]="method=taco_published"
  [weighted]="method=weighted"
  [upgrad]="method=upgrad"
  [task_specific]="method=naive job_type=task-specific"  # equal steps: 12 own-task queries per step, 3x a task's share
  [task_specific_equal_examples]="method=naive job_type=task-specific data.batch_size=4"  # 4 per step, as many as multitask
  [pcgrad]="method=pcgrad"
  [gradnorm]="method=gradnorm"
  [cgd]="method=cgd"
  [uncertainty]="method=uncertainty"
  [naive_noprompt]="method=naive prompt=none"
)
# Each arm's knob: its default (tune A) | two alternatives (tune B), one trial each. TACO: β (the EMA's memory: 10 or
# 100 steps) and τ; the weighted sum: vital-qa's weight (the task naive scores lowest); methods without a knob of their
# own tune the warm-up share instead, so that every arm's choice is the best of as many trials.
WARMUP="scheduler.warmup_ratio=0.1|scheduler.warmup_ratio=0|scheduler.warmup_ratio=0.3"
declare -A KNOBS=(
  [taco]="method.beta=0.9 method.tau=2|method.beta=0.99 method.tau=2|method.beta=0.9 method.tau=1"
  [taco_published]="method.beta=0.9 method.tau=2|method.beta=0.99 method.tau=2|method.beta=0.9 method.tau=1"
  [weighted]="++method.weights={vital-qa:2}|++method.weights={vital-qa:4}|++method.weights={vital-qa:2,vital-clue:0.5}"
)
knobs() { echo "${KNOBS[$1]:-$WARMUP}"; }
MAIN="naive taco task_specific task_specific_equal_examples"
read -r -a ARMS <<< "${ARMS:-naive taco taco_published weighted upgrad task_specific task_specific_equal_examples}"
is_main() { [[ " $MAIN " == *" $1 "* ]]; }
per_task() { [[ "$1" == task_specific* ]] && echo "data.task_names=$TASKS" || true; }

estimate() {  # projected seconds per stage from the costs of the header, printed in hours
  local lrs seeds seeds_main pages dev_pages
  lrs=$(tr ',' '\n' <<< "$LRS" | wc -l) seeds_main=$(tr ',' '\n' <<< "$MAIN_SEEDS" | wc -l) seeds=$(tr ',' '\n' <<< "$SEEDS" | wc -l)
  pages=$PAGES; [[ "$pages" == null ]] && pages=10033
  dev_pages=2800; ((quick)) && dev_pages=$DEV_PAGES  # the dev sub-corpus keeps every gold page of the sampled queries: ~2,800
  for arm in "${ARMS[@]}"; do
    jobs=1; [[ "$arm" == task_specific* ]] && jobs=3
    n=$seeds; is_main "$arm" && n=$seeds_main
    echo "$arm $jobs $n"
  done | awk -v steps="$STEPS" -v every="$VAL_EVERY" -v trials=$((lrs + 2)) -v layers="$LAYERS" -v search="$search" \
    -v pages="$pages" -v dev_pages="$dev_pages" -v full_test=$((${#FINAL_QUERIES[@]} > 0)) -v budget="$BUDGET_H" '
    BEGIN { step["naive"] = 1.5; step["weighted"] = 1.5; step["upgrad"] = 1.6; step["taco"] = 1.7; step["taco_published"] = 1.7
            step["task_specific"] = 1.4; step["task_specific_equal_examples"] = 0.6; scale = 0.1 + 0.9 * layers / 6
            setup = 14; invocation = 20; validation = 8 * scale
            tune_job = setup + 18 * scale * dev_pages / 2800
            final_job = setup + scale * (47 * pages / 10033 + (full_test ? 28 : 5)) }
    { s = ($1 in step ? step[$1] : 1.6) * scale
      tune += search * (trials * $2 * (tune_job + steps * s) + 3 * invocation)
      final += $3 * $2 * (final_job + steps * s + (int(steps / every) + 1) * validation) + invocation }
    END { all = (tune + final) / 3600; over = ""
          if (all > budget) over = sprintf("; over the %.1f h budget", budget)
          printf "projected: tune %.2f h, final %.2f h, all %.2f h (STEPS=%d, LAYERS=%d, %d trials per arm)%s\n", tune / 3600,
                 final / 3600, all, steps, layers, trials, over }'
}

if ((estimate)); then estimate; exit 0; fi
# The chosen settings go where Hydra finds experiments: conf/ of the installed package (the checkout's conf/ in an editable install).
PY="$(dirname "$(command -v multiret)")/python"
CONF_DIR="$("$PY" -c 'from multiret.configs import CONFIG_DIR; print(CONFIG_DIR)')"
start=$(date +%s)
mkdir -p "$ROOT"  # each invocation, finished or interrupted, adds "<start> <end> <seconds>" (UTC) to invocations.log
trap 'echo "$(date -u -d "@$start" +%FT%TZ) $(date -u +%FT%TZ) $(( $(date +%s) - start ))" >> "$ROOT/invocations.log"' EXIT
trap 'exit 143' TERM INT  # an interrupted invocation is logged too

if ((pilot)); then  # naive's dev curve over a long budget: where it stops rising sets STEPS
  COMMON=("${COMMON[@]/trainer.max_steps=$STEPS/trainer.max_steps=$PILOT_STEPS}")
  multiret train task_name=vital_pilot method=naive "${COMMON[@]}" data.eval_split=dev seed=13 "optimizer.lr=$PILOT_LR" \
    "trainer.val_check_interval=$PILOT_EVERY" "stages=[train]" "hydra.run.dir=$ROOT/pilot"
  "$PY" -m multiret.experiment.plateau "$ROOT/pilot" || echo "no plateau within $PILOT_STEPS steps: rerun with a larger PILOT_STEPS"
  exit 0
fi
estimate

if ((search)); then
  for arm in "${ARMS[@]}"; do  # 1. tune A: the learning rates, each arm's knob at its default
    IFS='|' read -r -a options <<< "$(knobs "$arm")"
    # shellcheck disable=SC2046,SC2086
    multiret train -m task_name="$arm" ${ARM[$arm]} ${options[0]} "${COMMON[@]}" "${TUNING[@]}" "data.corpus_max_pages=$DEV_PAGES" \
      "optimizer.lr=$LRS" $(per_task "$arm") "hydra.sweep.dir=$ROOT/tune/$arm"
  done
  multiret study select "$ROOT/tune" --out "$ROOT/tune_a"  # each arm's learning rate (its experiments are not used)
  for arm in "${ARMS[@]}"; do  # 2. tune B: the knob's alternatives at the arm's chosen learning rate
    lr=$("$PY" -c 'import json, sys; e = json.load(open(sys.argv[1]))[sys.argv[2]]; print(e["trials"][e["chosen"]]["settings"]["optimizer.lr"])' \
      "$ROOT/tune/selection.json" "$arm")
    IFS='|' read -r -a options <<< "$(knobs "$arm")"
    for k in 1 2; do
      # shellcheck disable=SC2046,SC2086
      multiret train -m task_name="$arm" ${ARM[$arm]} ${options[$k]} "${COMMON[@]}" "${TUNING[@]}" "data.corpus_max_pages=$DEV_PAGES" \
        "optimizer.lr=$lr" $(per_task "$arm") "hydra.sweep.dir=$ROOT/tune/$arm" "hydra.sweep.subdir=knob${k}_"'${hydra.job.num}'
    done
  done
  multiret study select "$ROOT/tune" --out "$CONF_DIR/experiment/$CHOSEN"
fi

for arm in "${ARMS[@]}"; do  # 3. the test split, with the chosen settings, every seed, validating on dev
  seeds=$SEEDS
  is_main "$arm" && seeds=$MAIN_SEEDS
  # shellcheck disable=SC2046
  multiret train -m "experiment=$CHOSEN/$arm" $(per_task "$arm") "seed=$seeds" resume=true data.eval_split=test \
    "data.corpus_max_pages=$PAGES" ${FINAL_QUERIES[@]+"${FINAL_QUERIES[@]}"} "${CURVES[@]}" "hydra.sweep.dir=$ROOT/final/$arm"
done

echo "study runs: $(( $(date +%s) - start )) s this invocation"
rm -rf "$DATA"  # 4. the page's inputs, collected anew (small, no machine paths), then the page from them alone
multiret study collect "$ROOT" --out "$DATA"
multiret study report "$DATA" --out "$REPORT" --pair taco taco_published --pair taco weighted --pair taco upgrad \
  --pair naive task_specific_equal_examples  # 4. the page (tables, tests, curves, specialisation, cosines, times)
echo "report: $REPORT"
