#!/usr/bin/env bash
# One GPU check, under 8 minutes on one GPU: step time and peak memory of every method at the
# T5-base shape (bf16, the paper's per-GPU batch), a reference-style TACO step for the ratio,
# 1M passages encoded and searched with FAISS on the GPU, then the tests that run on a GPU.
#   benchmarks/gpu_check.sh [OUT.json]            # on a machine with a CUDA GPU and faiss-gpu
#   benchmarks/gpu_check.sh --dry-run [OUT.json]  # the same code on the CPU at a tiny shape
# Options after OUT.json go to benchmarks/gpu_check.py (e.g. --steps 5 --passages 200000).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY=(--dry-run)
  shift
fi
OUT=${1:-gpu_check.json}
shift || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" benchmarks/gpu_check.py "${DRY[@]}" --out "$OUT" "$@"
if [[ ${#DRY[@]} -eq 0 ]]; then
  # The end-to-end tests train and index on the GPU (bf16) with this variable; see tests/test_end_to_end.py.
  MULTIRET_TEST_TRAINER=gpu "$PYTHON" -m pytest -q -m "not slow" tests/test_end_to_end.py
else
  MULTIRET_TEST_TRAINER=gpu "$PYTHON" -m pytest -q --collect-only -m "not slow" tests/test_end_to_end.py >/dev/null
fi
echo "gpu_check: figures in $OUT"
