#!/usr/bin/env bash
# The GPU check: on a CUDA machine, offline, bounded. It cannot pass by skipping.
#
#     bash bench/gpu_check.sh OUTDIR [--wheelhouse DIR] [--full] [--tests-only] [-- extra `python -m bench` flags]
#
# 1. setup     a venv (GPU_CHECK_VENV) made with --system-site-packages, so that the machine's own CuPy,
#              CUDA PyTorch and JAX are used (when python3 is itself a venv, as /opt/torch/.venv on
#              this project's H200, its site-packages are added to the new venv by a .pth file). What
#              bench/gpu-requirements.txt lists and the machine lacks is installed from --wheelhouse
#              with `pip --no-index` (PIP_NO_INDEX=1: the network is never reached); the checkout
#              itself with `pip install --no-deps -e .`. Nothing goes into the system's site-packages;
#              installed packages of the GPU stack (numpy, torch, jax*, cupy*, nvidia-*, cuda-*, ...)
#              are pinned, so a wheel can never replace them. The GPU libraries are never installed.
# 2. preflight CuPy, a CUDA PyTorch and JAX each run an op on the GPU; the packages and the MNIST
#              files are there. Otherwise ONE line says what is missing and how to fix it, exit 3.
# 3. tests     MLP_REQUIRE_GPU=1 pytest -m gpu -n 0: a GPU test that would skip fails (tests/require_gpu.py)
#              -> OUTDIR/pytest-gpu.txt and pytest-gpu.xml.
# 4. bench     python -m bench --device cuda -> OUTDIR/gpu-<card>.json, .md, .png. The default sweep
#              (bounded, about 8 minutes with the tests; never measured yet, see the notes) is
#                  --backends cupy,torch,jax --peers torch-expert --dtype float32
#                  --sizes real,100000,1000000 --hidden 1024 --batches 64 --epochs 10 --budget 1
#              i.e. the default job B=64 (H=128), two classes and ten, on every GPU engine (CuPy eager,
#              torch eager, torch CUDA graph, JAX eager and compiled) and full batch at three sizes, with
#              the expert PyTorch peer. --full: the whole sweep, `--device cpu,cuda` with the bench's defaults
#              (tens of minutes). Flags after `--` are appended to the GPU bench command. The bench
#              holds every row's first-step loss to float64 NumPy's (bench/reference.py) and exits 1
#              on an error, a mismatch or an unchecked row.
# 5. summary   OUTDIR/summary.txt: pytest's count and each failed test; `python -m bench --summary` on
#              the bench's JSON: every target of the bench (bench/targets.py) met, missed, within
#              noise or not measured, and the bench's problems; each phase's time; the result.
#
# Exit 0 only if every phase passed: tests passed with nothing skipped, the bench exited 0 (every
# row measured or skipped for a reason, each GPU row's first loss checked, something measured on
# the GPU), and its summary found no problem. A missed target is reported, not a failure.
# Exit 2: usage; 3: not ready (preflight); 1: failed.
# A phase cut off by its time limit fails. Each phase's elapsed time is printed and in phases.txt.
# Bounds: setup's steps have their own timeouts; the tests and the bench run inside the deadline
# below (tests 240 s at most, the bench what is left); the summary has 60 s after it.
#
# Environment:
#   PYTHON=/path/to/python  use this interpreter as it is: no venv is made and nothing is installed
#                           (a prepared environment; the CPU tests use it); --wheelhouse is refused
#   BASE_PYTHON             the interpreter the venv is made from (default python3)
#   GPU_CHECK_VENV          where the venv goes (default $TMPDIR/mlp-gpu-check-venv, outside OUTDIR so that
#                           OUTDIR holds results only; reused when it exists, the checkout reinstalled)
#   MLP_TEST_DATA_DIR or MLP_DATA_DIR   the folder with the four MNIST IDX files (default
#                           ../shared/datasets/mnist-3-7 beside the checkout, else ~/.cache/mlp/mnist)
#   GPU_CHECK_DEADLINE_S    the bound on the whole run (default 480; 4000 with --full)
# Never written by this script: a GPU figure. It only runs the programs that measure them.
set -euo pipefail

usage() {
    echo "usage: bash bench/gpu_check.sh OUTDIR [--wheelhouse DIR] [--full] [--tests-only] [-- extra python -m bench flags]" >&2
    exit 2
}

OUT=""; WHEELHOUSE=""; FULL=0; TESTS_ONLY=0; EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
        --wheelhouse) [ $# -ge 2 ] || usage; WHEELHOUSE=$2; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=}; shift ;;
        --full) FULL=1; shift ;;
        --tests-only) TESTS_ONLY=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage ;;
        -*) echo "gpu_check: unknown option $1 (bench flags go after --)" >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { echo "gpu_check: one OUTDIR only, got $OUT and $1 (bench flags go after --)" >&2; exit 2; }
           OUT=$1; shift ;;
    esac
done
[ -n "$OUT" ] || usage

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
if [ -n "$WHEELHOUSE" ]; then
    [ -d "$WHEELHOUSE" ] || { echo "gpu_check: --wheelhouse $WHEELHOUSE is not a folder: build one with bash bench/gpu_wheels.sh DIR" >&2; exit 2; }
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
fi
if [ -n "${PYTHON:-}" ] && [ -n "$WHEELHOUSE" ]; then
    echo "gpu_check: PYTHON is set, so nothing is installed: drop --wheelhouse, or unset PYTHON to use a venv" >&2; exit 2
fi

export PIP_NO_INDEX=1                      # offline: pip never looks at an index
export PIP_DISABLE_PIP_VERSION_CHECK=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false # JAX would take 75% of the GPU in every process
export MLP_REQUIRE_GPU=1                   # tests/require_gpu.py: a gpu test that would skip fails
export PYTHONUNBUFFERED=1

START=$SECONDS
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-$([ "$FULL" = 1 ] && echo 4000 || echo 480)}
PHASES=$OUT/phases.txt
: > "$PHASES"
say() { echo "gpu_check: $*" >&2; }
left() { echo $(( DEADLINE_S - (SECONDS - START) )); }
record() {  # record NAME SECONDS EXIT
    printf '%s %s %s\n' "$1" "$2" "$3" >> "$PHASES"
    say "phase $1: $2 s, exit $3"
}
# run_phase NAME CAP LOG cmd...: cmd under `timeout` (CAP or the time left, the smaller), its output
# on the terminal and in LOG; sets RC (124: cut off by the limit). The pipeline's status is read
# from PIPESTATUS, so tee never hides a failure.
run_phase() {
    local name=$1 cap=$2 log=$3 limit t0; shift 3
    limit=$(left); [ "$cap" -lt "$limit" ] && limit=$cap
    if [ "$limit" -lt 5 ]; then
        say "phase $name: not run, the ${DEADLINE_S} s deadline is reached"; RC=124; record "$name" 0 124; return
    fi
    t0=$SECONDS
    set +e
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
    local codes=("${PIPESTATUS[@]}")
    set -e
    RC=${codes[0]}
    [ "$RC" -ne 0 ] || [ "${codes[1]}" -eq 0 ] || RC=1
    [ "$RC" -ne 124 ] && [ "$RC" -ne 137 ] || say "phase $name: cut off after $limit s"
    record "$name" $(( SECONDS - t0 )) "$RC"
}

# ---------------------------------------------------------------------------- the card
command -v nvidia-smi >/dev/null || { say "nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its driver"; exit 3; }
if ! SMI=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1) || [ -z "$SMI" ]; then
    say "nvidia-smi failed or found no GPU ($(echo "$SMI" | head -1)): check the driver with nvidia-smi"; exit 3
fi
echo "$SMI" > "$OUT/nvidia-smi.txt"
CUDA_MAJOR=$(timeout 30 nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -1 || true)
# "NVIDIA H100 80GB HBM3" -> h100, "NVIDIA GeForce RTX 4090" -> rtx-4090: the words up to the first with a digit
CARD=$(echo "$SMI" | head -1 | cut -d, -f1 | tr 'A-Z' 'a-z' | tr -s ' -' '\n\n' |
       awk '/^(nvidia|geforce|tesla|quadro)$/ {next} {w = w (w ? "-" : "") $0} /[0-9]/ {exit} END {print w}' |
       tr -cd 'a-z0-9-')
CARD=${CARD:-gpu}
say "card: $(echo "$SMI" | head -1) -> gpu-$CARD.*, CUDA ${CUDA_MAJOR:-?} (driver); results in $OUT"

# ---------------------------------------------------------------------------- setup
REQS=$ROOT/bench/gpu-requirements.txt
REQ_FILES=("$REQS")
[ "$FULL" = 1 ] && REQ_FILES+=("$ROOT/bench/gpu-requirements-full.txt")
# The GPU stack: pinned at the versions found, never installed or replaced by this script.
STACK_RE='^(numpy|scipy|ml[-_]dtypes|opt[-_]einsum|torch|triton|jax|jaxlib|jax[-_]cuda.*|cupy.*|nvidia[-_].*|cuda[-_].*|numba.*|llvmlite)$'

# Prints what the requirement files ask for and this interpreter lacks ("name>=x (have y)", ", "-joined).
PKGCHECK='
import re, sys
from importlib import metadata
def key(v):
    return tuple(int(x) for x in re.findall(r"\d+", re.match(r"[\d.]*", v).group()))
missing = []
for path in sys.argv[1:]:
    for line in open(path):
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(?:>=\s*([\d.]+))?", line)
        if m is None:
            sys.exit(f"cannot read requirement {line!r} in {path}: only name[extra]>=version")
        try:
            have = metadata.version(m.group(1))
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if m.group(3) and key(have) < key(m.group(3)):
            missing.append(f"{line} (have {have})")
print(", ".join(missing))
'
# Writes name==version for each installed distribution of the GPU stack (the pip constraints).
PINS='
import re, sys
from importlib import metadata
seen = {}
for d in metadata.distributions():
    name = (d.metadata["Name"] or "").lower().replace("_", "-")
    if name and re.match(sys.argv[1], name) and name not in seen:
        seen[name] = d.version
print("\n".join(f"{n}=={v}" for n, v in sorted(seen.items())))
'

T0=$SECONDS
PIPLOG=$OUT/pip-install.txt
: > "$PIPLOG"
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    command -v "$PY" >/dev/null || { say "PYTHON=$PY is not an interpreter: unset PYTHON or name one"; exit 2; }
    say "setup: PYTHON=$PY as it is (no venv, nothing installed)"
else
    BASE=${BASE_PYTHON:-python3}
    VENV=${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/mlp-gpu-check-venv}
    if [ ! -x "$VENV/bin/python" ]; then
        say "setup: a venv with the system's site-packages: $VENV (from $BASE)"
        if ! timeout 120 "$BASE" -m venv --system-site-packages "$VENV" >> "$PIPLOG" 2>&1; then
            rm -rf "$VENV"   # no ensurepip for this base: a venv without pip, whose python runs the base's pip
            timeout 60 "$BASE" -m venv --system-site-packages --without-pip "$VENV" >> "$PIPLOG" 2>&1 \
                || { say "cannot make a venv with $BASE (see $PIPLOG): set BASE_PYTHON to a python3 with venv"; exit 3; }
        fi
        # A base that is itself a venv (python3 is /opt/torch/.venv/bin/python3 on the H200): its
        # site-packages are not the system's, so a .pth file adds them to the new venv, after its
        # own (site.addsitedir, so that their own .pth files count too).
        OUTER=$(timeout 60 "$BASE" -c 'import site, sys; print("\n".join(f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()) if sys.prefix != sys.base_prefix else "")') \
            || { say "$BASE does not run: set BASE_PYTHON to a working python3"; exit 3; }
        if [ -n "$OUTER" ]; then
            SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
            echo "$OUTER" > "$SP/gpu_check_base_env.pth"
        fi
    fi
    PY=$VENV/bin/python
    timeout 60 "$PY" -m pip --version >> "$PIPLOG" 2>&1 || { say "the venv $VENV has no working pip (see $PIPLOG): remove it, or set BASE_PYTHON to a python3 with pip"; exit 3; }
fi
PYVER=$(timeout 60 "$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || { say "$PY does not run: unset PYTHON, or set BASE_PYTHON to a working python3"; exit 3; }
FULL_FLAG=""; [ "$FULL" = 0 ] || FULL_FLAG=" --full"
WHEELS_HINT="build a wheelhouse on a machine with network: bash bench/gpu_wheels.sh DIR --python $PYVER$FULL_FLAG, carry DIR here, rerun with --wheelhouse DIR"

pkgcheck() {
    timeout 60 "$PY" -c "$PKGCHECK" "${REQ_FILES[@]}" 2>> "$PIPLOG" || { say "cannot run $PY to check the packages (see $PIPLOG)"; exit 3; }
}
MISSING=$(pkgcheck)
if [ -n "$MISSING" ] && [ -z "${PYTHON:-}" ] && [ -n "$WHEELHOUSE" ]; then
    timeout 60 "$PY" -c "$PINS" "$STACK_RE" > "$OUT/gpu-stack-pins.txt" 2>> "$PIPLOG" \
        || { say "cannot list the installed GPU stack with $PY (see $PIPLOG)"; exit 3; }
    say "setup: installing from $WHEELHOUSE: $MISSING"
    if ! timeout 300 "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" --constraint "$OUT/gpu-stack-pins.txt" \
            --no-cache-dir "${REQ_FILES[@]/#/--requirement=}" >> "$PIPLOG" 2>&1; then
        say "setup: pip could not install everything from $WHEELHOUSE: $(grep -E '^ERROR' "$PIPLOG" | tail -1 | cut -c1-300)"
        # one at a time, so that what the wheelhouse has is installed and only what it lacks is named below
        while IFS= read -r req; do
            timeout 120 "$PY" -m pip install --no-index --find-links "$WHEELHOUSE" \
                --constraint "$OUT/gpu-stack-pins.txt" --no-cache-dir "$req" < /dev/null >> "$PIPLOG" 2>&1 || true
        done < <(grep -hvE '^[[:space:]]*(#|$)' "${REQ_FILES[@]}")
    fi
    MISSING=$(pkgcheck)
fi
if [ -z "$MISSING" ] && [ -z "${PYTHON:-}" ]; then
    # the checkout itself, editable, so that the code under test is this checkout's
    timeout 120 "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir -e "$ROOT" >> "$PIPLOG" 2>&1 \
        || MISSING="the project (pip install --no-deps -e $ROOT failed: see $PIPLOG)"
fi
record setup $(( SECONDS - T0 )) 0

# ---------------------------------------------------------------------------- preflight
DATA=${MLP_TEST_DATA_DIR:-${MLP_DATA_DIR:-}}
if [ -z "$DATA" ]; then
    DATA=$ROOT/../shared/datasets/mnist-3-7
    [ -f "$DATA/train-images-idx3-ubyte.gz" ] || DATA=$HOME/.cache/mlp/mnist
fi
NO_DATA=""
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -f "$DATA/$f" ] || { NO_DATA="no MNIST file $DATA/$f (offline, nothing is downloaded): set MLP_DATA_DIR to the folder with the four IDX files"; break; }
done
export MLP_TEST_DATA_DIR=$DATA

# Each GPU library runs one op on the GPU; prints its versions, or the reasons on one line (exit 3).
GPUCHECK='
import importlib.util, os, sys
cuda = os.environ.get("GPU_CHECK_CUDA_MAJOR") or "12"
class NoGPU(Exception):
    pass
ok, bad = [], []
def check(name, how, run):
    if importlib.util.find_spec(name) is None:
        bad.append(f"{name} is not installed ({how})")
        return
    try:
        ok.append(run())
    except NoGPU as e:
        bad.append(f"{e} ({how})")
    except Exception as e:
        text = (str(e).strip().splitlines() or [""])[0][:200]
        bad.append(f"{name} fails on the GPU: {type(e).__name__}: {text} ({how})")
def cupy_():
    import cupy
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise NoGPU(f"cupy {cupy.__version__} sees no GPU: {type(e).__name__}: {str(e)[:120]}") from None
    if count < 1:
        raise NoGPU(f"cupy {cupy.__version__} sees no GPU")
    assert float(cupy.arange(4, dtype=cupy.float32).sum()) == 6.0
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return f"cupy {cupy.__version__} ({name})"
def torch_():
    import torch
    if not torch.cuda.is_available():
        raise NoGPU(f"torch {torch.__version__} sees no CUDA GPU")
    assert float(torch.arange(4.0, device="cuda").sum()) == 6.0
    return f"torch {torch.__version__} ({torch.cuda.get_device_name(0)})"
def jax_():
    import jax
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        raise NoGPU(f"jax {jax.__version__} has no GPU device") from None
    assert float(jax.device_put(jax.numpy.arange(4.0), gpus[0]).sum()) == 6.0
    return f"jax {jax.__version__} ({gpus[0].device_kind})"
check("cupy", f"needs the CuPy for CUDA {cuda}, e.g. cupy-cuda{cuda}x", cupy_)
check("torch", "needs a CUDA build of PyTorch", torch_)
check("jax", f"needs jax[cuda{cuda}], installed in a pip call of its own", jax_)
if bad:
    print("GPU libraries: " + "; ".join(bad))
    sys.exit(3)
print(", ".join(ok))
'
T0=$SECONDS
set +e
GPU=$(GPU_CHECK_CUDA_MAJOR=$CUDA_MAJOR timeout 180 "$PY" -c "$GPUCHECK" gpu-check-preflight 2> "$OUT/preflight-stderr.txt")
GPU_RC=$?
set -e
[ "$GPU_RC" -eq 0 ] || [ "$GPU_RC" -eq 3 ] || GPU="GPU libraries: the check itself failed (exit $GPU_RC: $(tail -1 "$OUT/preflight-stderr.txt" | cut -c1-200))"
record preflight $(( SECONDS - T0 )) "$GPU_RC"
PROBLEMS=()
[ -z "$MISSING" ] || PROBLEMS+=("missing packages for Python $PYVER: $MISSING ($WHEELS_HINT)")
[ "$GPU_RC" -eq 0 ] || PROBLEMS+=("$GPU; this script never installs the GPU libraries: the machine must have them")
[ -z "$NO_DATA" ] || PROBLEMS+=("$NO_DATA")
if [ ${#PROBLEMS[@]} -gt 0 ]; then
    MSG="not ready: $(printf '%s; ' "${PROBLEMS[@]}")"
    echo "${MSG%; }" > "$OUT/not-ready.txt"
    say "${MSG%; }"
    exit 3
fi
say "preflight: $GPU; data $DATA"
echo "$GPU" > "$OUT/gpu-libraries.txt"

# ---------------------------------------------------------------------------- tests
FAILED=()
say "GPU tests: MLP_REQUIRE_GPU=1 pytest -m gpu -> $OUT/pytest-gpu.txt"
run_phase tests 240 "$OUT/pytest-gpu.txt" "$PY" -m pytest -m gpu -n 0 -p no:cacheprovider -ra \
    --junitxml "$OUT/pytest-gpu.xml" -o junit_family=xunit2
[ "$RC" -eq 0 ] || FAILED+=("GPU tests (pytest exit $RC: $OUT/pytest-gpu.txt)")

if [ "$TESTS_ONLY" = 1 ]; then
    say "--tests-only: no bench; $(( SECONDS - START )) s in all"
    [ ${#FAILED[@]} -eq 0 ] || { say "FAILED: ${FAILED[*]}"; exit 1; }
    say "passed: GPU tests"; exit 0
fi

# ---------------------------------------------------------------------------- bench
JSON=$OUT/gpu-$CARD.json
rm -f "$JSON"
if [ "$FULL" = 1 ]; then
    SWEEP=(--device cpu,cuda)
    BENCH_CAP=3600
else
    SWEEP=(--device cuda --backends cupy,torch,jax --peers torch-expert --dtype float32
           --sizes real,100000,1000000 --hidden 1024 --batches 64 --epochs 10 --budget 1)
    BENCH_CAP=360
fi
say "bench: python -m bench ${SWEEP[*]} ${EXTRA[*]} -> $OUT/gpu-$CARD.{json,md,png}"
run_phase bench "$BENCH_CAP" "$OUT/bench-log.txt" "$PY" -m bench "${SWEEP[@]}" --data-dir "$DATA" --no-download \
    --json "$JSON" --markdown "$OUT/gpu-$CARD.md" --plot "$OUT/gpu-$CARD.png" "${EXTRA[@]}"
[ "$RC" -eq 0 ] || FAILED+=("the bench (exit $RC: $OUT/bench-log.txt)")

# ---------------------------------------------------------------------------- summary
SUMMARY=$OUT/summary.txt
T0=$SECONDS
{
    printf 'GPU check summary (bench/gpu_check.sh): what the tests and the bench wrote in %s, nothing else\n\n' "$OUT"
    if [ -f "$OUT/pytest-gpu.txt" ]; then
        echo "GPU tests: $(tail -n 1 "$OUT/pytest-gpu.txt" | sed 's/^=* *//; s/ *=*$//')"
        grep -E '^(FAILED|ERROR) ' "$OUT/pytest-gpu.txt" | sed 's/^/- /' || true
    else
        echo "GPU tests: not run"
    fi
    echo
    set +e
    timeout 60 "$PY" -m bench --summary "$JSON" 2>&1
    SUM_RC=$?
    set -e
} > "$SUMMARY"
record summary $(( SECONDS - T0 )) "$SUM_RC"
[ "$SUM_RC" -eq 0 ] || FAILED+=("the summary (exit $SUM_RC: $SUMMARY)")
RESULT="passed: GPU tests, bench and summary (targets met or missed are in $SUMMARY)"
[ ${#FAILED[@]} -eq 0 ] || RESULT="FAILED: $(printf '%s; ' "${FAILED[@]}" | sed 's/; $//')"
printf '\nPhases: %s\nResult: %s\n' "$(awk '{printf "%s%s %s s (exit %s)", (NR > 1 ? ", " : ""), $1, $2, $3}' \
    "$PHASES")" "$RESULT" >> "$SUMMARY"
cat "$SUMMARY"
say "$(( SECONDS - START )) s in all (deadline $DEADLINE_S s); results in $OUT"
say "$RESULT"
[ ${#FAILED[@]} -eq 0 ]
