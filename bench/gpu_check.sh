#!/usr/bin/env bash
# One command for any CUDA machine: install only what is missing, run the GPU tests and the
# full GPU sweep (full batch and minibatch, every engine, every peer), and write
#     OUTDIR/pytest-gpu.txt  OUTDIR/gpu-<card>.json  OUTDIR/gpu-<card>.md  OUTDIR/gpu-<card>.png
#
#     bash bench/gpu_check.sh OUTDIR [extra `python -m bench` flags]
#
# Environment: PYTHON (default: python3 on PATH, or the active venv), MLP_DATA_DIR or
# MLP_TEST_DATA_DIR (the MNIST folder; else the default ~/.cache/mlp/mnist, downloaded if missing),
# CUDA_MAJOR (12 or 13; default: from nvidia-smi's driver). Never written by this script: a GPU figure.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_check.sh OUTDIR [extra python -m bench flags]" >&2
    exit 2
fi
OUT=$1; shift
mkdir -p "$OUT"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}

command -v nvidia-smi >/dev/null || { echo "gpu_check: nvidia-smi not found: this needs a CUDA machine" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/nvidia-smi.txt"

if [ -z "${CUDA_MAJOR:-}" ]; then
    CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -1)
    [ "${CUDA_MAJOR:-12}" -ge 13 ] && CUDA_MAJOR=13 || CUDA_MAJOR=12
fi

have() { "$PY" -c "import $1" 2>/dev/null; }
need=()
# the project with its test tools (a checkout imports mlp.bench without being installed, so ask for them)
"$PY" -c "import mlp.cli, array_api_compat, xdist, hypothesis, array_api_strict, matplotlib, tqdm, pooch, psutil" 2>/dev/null \
    || need+=(-e ".[test]")
have cupy || need+=("cupy-cuda${CUDA_MAJOR}x")
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || need+=(torch)
"$PY" -c "import jax, sys; sys.exit(0 if jax.devices('gpu') else 1)" 2>/dev/null || need+=("jax[cuda${CUDA_MAJOR}]")
have sklearn || need+=(scikit-learn)
if [ ${#need[@]} -gt 0 ]; then
    echo "gpu_check: installing what is missing: ${need[*]}" >&2
    "$PY" -m pip install -q "${need[@]}"
else
    echo "gpu_check: nothing to install" >&2
fi

export MLP_TEST_DATA_DIR=${MLP_TEST_DATA_DIR:-${MLP_DATA_DIR:-}}
DATA=()
[ -n "${MLP_TEST_DATA_DIR}" ] && DATA=(--data-dir "$MLP_TEST_DATA_DIR")

CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z' 'a-z' | sed 's/nvidia//' | awk '{print $1}')
echo "gpu_check: GPU tests (pytest -m gpu) -> $OUT/pytest-gpu.txt" >&2
set +e
"$PY" -m pytest -m gpu -n 0 -ra -q -p no:cacheprovider 2>&1   # -n 0: one process on the GPU | tee "$OUT/pytest-gpu.txt"
TESTS=${PIPESTATUS[0]}
echo "gpu_check: the GPU sweep, with the CPU rows alongside -> $OUT/gpu-$CARD.{json,md,png}" >&2
"$PY" -m bench --device cpu,cuda "${DATA[@]}" --json "$OUT/gpu-$CARD.json" --markdown "$OUT/gpu-$CARD.md" \
    --plot "$OUT/gpu-$CARD.png" "$@" 2>&1 | tee "$OUT/bench-log.txt"
BENCH=${PIPESTATUS[0]}
set -e
echo "gpu_check: pytest -m gpu exit $TESTS, bench exit $BENCH; results in $OUT" >&2
[ "$TESTS" -eq 0 ] && [ "$BENCH" -eq 0 ]
