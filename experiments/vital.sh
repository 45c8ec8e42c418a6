#!/usr/bin/env bash
# TACO vs the other gradient methods vs task-specific models on the embedded vital benchmark (CPU).
# Usage: experiments/vital.sh [extra Hydra overrides, e.g. trainer.max_steps=50]
set -euo pipefail
export MULTIRET_LOGS="${MULTIRET_LOGS:-$PWD/logs}"
multiret train -m experiment=vital_methods "$@"
multiret train -m experiment=vital_task_specific "$@"
multiret compare "$MULTIRET_LOGS/vital_methods/multiruns" "$MULTIRET_LOGS/vital_task_specific/multiruns" --out "$MULTIRET_LOGS/vital_comparison"
echo "table: $MULTIRET_LOGS/vital_comparison/comparison.md"
