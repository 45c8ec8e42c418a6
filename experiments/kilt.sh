#!/usr/bin/env bash
# The paper's KILT comparison: TACO vs the other gradient methods vs task-specific T5 models (docs/reproduce-kilt.md).
# Usage: KILT_DIR=... PASSAGES=... TRIVIAQA="train.json dev.json" T5=/models/t5-base OUT=/data/kilt-prepared \
#        experiments/kilt.sh [extra Hydra overrides, e.g. hydra/launcher=slurm trainer.devices=8]
set -euo pipefail
: "${KILT_DIR:?set KILT_DIR to the folder of KILT's <task>-{train,dev}-kilt.jsonl files}"
: "${PASSAGES:?set PASSAGES to KILT's 100-word passage TSV (id, text, title, wikipedia_id)}"
: "${TRIVIAQA:?set TRIVIAQA to TriviaQA's question files (space-separated)}"
: "${T5:?set T5 to a local T5 v1.0 base folder (save_pretrained layout)}"
: "${OUT:?set OUT to the folder prepare kilt writes}"
export MULTIRET_LOGS="${MULTIRET_LOGS:-$PWD/logs}"
# shellcheck disable=SC2086  # TRIVIAQA is a list of files
multiret prepare kilt --kilt-dir "$KILT_DIR" --passages "$PASSAGES" --out "$OUT" --triviaqa-questions $TRIVIAQA
common=(data.root="$OUT" model.encoder.path="$T5")
multiret train -m experiment=kilt_methods "${common[@]}" "$@"
multiret train -m experiment=kilt_task_specific "${common[@]}" "$@"
multiret episodes experiment=kilt_ance "${common[@]}" "$@"
multiret compare "$MULTIRET_LOGS/kilt_methods/multiruns" "$MULTIRET_LOGS/kilt_task_specific/multiruns" --out "$MULTIRET_LOGS/kilt_comparison"
echo "table: $MULTIRET_LOGS/kilt_comparison/comparison.md; TACO with episodes: $MULTIRET_LOGS/kilt_ance/episodes/results.json"
