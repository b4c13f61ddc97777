#!/usr/bin/env bash
# The wheelhouse for bench/gpu_check.sh, built on a machine WITH network, carried to a GPU machine
# without it:
#
#     bash bench/gpu_wheels.sh DIR [--python 3.10,3.11,3.12,3.13] [--full] [--with-large]
#     # then, on the GPU machine:  bash bench/gpu_check.sh OUTDIR --wheelhouse DIR
#
# It downloads (pip download, binary wheels only, CPython on manylinux x86_64, for each Python
# version given) what bench/gpu-requirements.txt lists, with its dependencies
# (bench/gpu-requirements-full.txt too with --full: scikit-learn for the full sweep's peer), and
# builds a wheel of this project (pip wheel --no-deps .).
#
# Left out, unless --with-large, and listed at the end: the GPU stack, which gpu_check.sh never
# installs (torch, jax*, cupy*, nvidia-*, cuda-*, triton, numba*, llvmlite), and the large binary
# wheels that a machine with the GPU libraries has anyway (numpy, scipy, pandas): NumPy comes with
# CuPy, PyTorch and JAX, and a second NumPy in the check's venv could shadow the one they were built
# against, so gpu_check.sh pins it and never installs it. matplotlib and pillow stay in: the GPU
# libraries do not bring them (a rehearsal on a venv of numpy, torch and jax alone found them
# missing). If the GPU machine lacks one of those left out, gpu_check.sh says which in one line;
# --with-large keeps them.
#
# Environment: PYTHON (default python3) runs pip; its own pip configuration applies (an index
# mirror, a proxy). Only pip talks to the network.
set -euo pipefail

usage() {
    echo "usage: bash bench/gpu_wheels.sh DIR [--python 3.10,3.11,3.12,3.13] [--full] [--with-large]" >&2
    exit 2
}
DIR=""; VERSIONS=3.10,3.11,3.12,3.13; FULL=0; LARGE=0
while [ $# -gt 0 ]; do
    case $1 in
        --python) [ $# -ge 2 ] || usage; VERSIONS=$2; shift 2 ;;
        --python=*) VERSIONS=${1#*=}; shift ;;
        --full) FULL=1; shift ;;
        --with-large) LARGE=1; shift ;;
        -h|--help) usage ;;
        -*) echo "gpu_wheels: unknown option $1" >&2; exit 2 ;;
        *) [ -z "$DIR" ] || usage; DIR=$1; shift ;;
    esac
done
[ -n "$DIR" ] || usage
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
LOG=$DIR/.gpu_wheels.log
: > "$LOG"
REQ=(--requirement "$ROOT/bench/gpu-requirements.txt")
[ "$FULL" = 1 ] && REQ+=(--requirement "$ROOT/bench/gpu-requirements-full.txt")
# manylinux_2_28 covers glibc 2.28 and newer (RHEL 8, Ubuntu 20.04 and later); pip matches each tag exactly
PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)
GPU_STACK='^(torch|triton|jax|jaxlib|jax_cuda.*|cupy.*|nvidia_(cu|nc|nv).*|cuda_(bindings|python|toolkit).*|numba.*|llvmlite)-'
LARGE_RE='^(numpy|scipy)-'

for v in ${VERSIONS//,/ }; do
    case $v in 3.1[0-9]) ;; *) echo "gpu_wheels: --python takes versions like 3.12, got $v" >&2; exit 2 ;; esac
    echo "gpu_wheels: Python $v: pip download ..." >&2
    timeout 900 "$PY" -m pip download --dest "$DIR" --only-binary=:all: --python-version "$v" --implementation cp \
        "${PLATFORMS[@]}" "${REQ[@]}" >> "$LOG" 2>&1 \
        || { echo "gpu_wheels: pip download for Python $v failed: $(grep -E '^ERROR' "$LOG" | tail -1 | cut -c1-300) (full log: $LOG)" >&2; exit 1; }
done
echo "gpu_wheels: the project: pip wheel --no-deps $ROOT" >&2
timeout 600 "$PY" -m pip wheel --no-deps --wheel-dir "$DIR" "$ROOT" >> "$LOG" 2>&1 \
    || { echo "gpu_wheels: pip wheel of the project failed: $(grep -E '^ERROR' "$LOG" | tail -1 | cut -c1-300) (full log: $LOG)" >&2; exit 1; }

left_out=()
for f in "$DIR"/*.whl; do
    name=$(basename "$f")
    if [[ $name =~ $GPU_STACK ]] || { [ "$LARGE" = 0 ] && [[ $name =~ $LARGE_RE ]]; }; then
        left_out+=("${name%%-*}")
        rm -f "$f"
    fi
done
ls -1 "$DIR" | grep -v '\.whl$' | grep -v '^\.gpu_wheels\.log$' | sed 's/^/gpu_wheels: not a wheel, left as it is: /' >&2 || true
echo "gpu_wheels: $(ls "$DIR"/*.whl | wc -l) wheels in $DIR, $(du -sh --exclude=.gpu_wheels.log "$DIR" | cut -f1) in all:" >&2
ls -1 "$DIR"/*.whl | xargs -n1 basename | sed 's/-py[23].*\|-cp[0-9].*//' | sort | uniq -c | awk '{printf "  %s%s\n", $2, ($1 > 1 ? " (" $1 " wheels)" : "")}' >&2
if [ ${#left_out[@]} -gt 0 ]; then
    echo "gpu_wheels: left out (the GPU machine must have them; --with-large keeps the large ones): $(printf '%s\n' "${left_out[@]}" | sort -u | tr '\n' ' ')" >&2
fi
