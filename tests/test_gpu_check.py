"""bench/gpu_check.sh, its summary (`python -m bench --summary`) and the MLP_REQUIRE_GPU hook, on a
machine without a GPU.

The check must not pass here: a fake nvidia-smi gets it past the card, and then each test asserts
the reason it stops (a non-zero exit and the exact words), so none of them can pass by the check
having quietly done nothing. What needs a GPU (the GPU tests passing, the bench's GPU rows) is not
tested here: it waits for a machine with one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import pytest

from mlp.bench.targets import TARGETS

from .conftest import REPO, call_cli

CHECK = REPO / "bench" / "gpu_check.sh"
WHEELS = REPO / "bench" / "gpu_wheels.sh"

FAKE_SMI = """#!/bin/sh
# a fake nvidia-smi: a plausible card and driver, and no GPU behind them
name=${FAKE_GPU_NAME:-NVIDIA H100 80GB HBM3}
case "$*" in
  *--query-gpu=name,driver_version,memory.total*) echo "$name, 580.159.03, 81559 MiB" ;;
  *--query-gpu=name*) echo "$name" ;;
  *) echo "| NVIDIA-SMI 580.159.03      Driver Version: 580.159.03      CUDA Version: 13.0     |" ;;
esac
"""


def fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    return bin_dir


def check_env(tmp_path: Path, data_dir=None, **extra) -> dict:
    """The environment of a check run: this one, less pytest's and the check's own variables, with
    the fake nvidia-smi first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "MLP_", "PIP_", "GPU_CHECK_")) and k not in ("PYTHON", "BASE_PYTHON")}
    env["PATH"] = f"{fake_bin(tmp_path)}{os.pathsep}{env.get('PATH', '')}"
    if data_dir is not None:
        env["MLP_TEST_DATA_DIR"] = str(data_dir)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_check(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CHECK), *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def stub_dask_cuda(tmp_path: Path) -> Path:
    """A folder for PYTHONPATH that makes dask-cuda look installed (a package and its metadata),
    so that the only thing missing is the GPU."""
    site = tmp_path / "stub"
    (site / "dask_cuda").mkdir(parents=True)
    (site / "dask_cuda" / "__init__.py").write_text("")
    info = site / "dask_cuda-99.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dask-cuda\nVersion: 99.0\n")
    return site


def gpu_reasons() -> list[str]:
    """What the preflight must say about each GPU library in this environment."""
    out = []
    for name, seen in (("cupy", None), ("torch", "sees no CUDA GPU"), ("jax", "has no GPU device")):
        try:
            out.append(f"{name} {metadata.version(name)} {seen or 'sees no GPU'}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} is not installed")
    return out


# ----------------------------------------------------------------------------- gpu_check.sh


def test_usage_errors_are_one_line_exit_2(tmp_path):
    env = check_env(tmp_path)
    for args, words in (((), "usage: bash bench/gpu_check.sh OUTDIR"),
                        ((tmp_path / "o", "--wheelhouse", tmp_path / "none"), "is not a folder"),
                        ((tmp_path / "o", "--bogus"), "unknown option --bogus"),
                        ((tmp_path / "o", tmp_path / "p"), "one OUTDIR only")):
        done = run_check(*args, env=env, timeout=30)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr
    (tmp_path / "wh").mkdir()
    done = run_check(tmp_path / "o", "--wheelhouse", tmp_path / "wh", env={**env, "PYTHON": sys.executable}, timeout=30)
    assert done.returncode == 2 and "PYTHON is set, so nothing is installed" in done.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi", path="/usr/bin:/bin") is not None, reason="this machine has nvidia-smi")
def test_without_nvidia_smi_it_stops_at_once(tmp_path):
    done = run_check(tmp_path / "o", env={**check_env(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=30)
    assert done.returncode == 3
    assert last_line(done.stderr) == ("gpu_check: nvidia-smi not found: this check needs a machine with an NVIDIA GPU "
                                      "and its driver")


@pytest.mark.parametrize("name, card", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                        ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("NVIDIA A100-SXM4-80GB", "a100"),
                                        ("Tesla V100-SXM2-16GB", "v100")])
def test_the_card_is_named_from_nvidia_smi(tmp_path, name, card):
    # stops right after naming the card: PYTHON names no interpreter
    env = {**check_env(tmp_path), "FAKE_GPU_NAME": name, "PYTHON": str(tmp_path / "no-python")}
    done = run_check(tmp_path / "o", env=env, timeout=30)
    assert done.returncode == 2 and "is not an interpreter" in last_line(done.stderr), done.stderr
    assert f"-> gpu-{card}.*, CUDA 13 (driver)" in done.stderr
    assert (tmp_path / "o" / "nvidia-smi.txt").read_text().startswith(name + ", 580.159.03")


def test_empty_wheelhouse_fails_in_one_line_naming_what_is_missing(tmp_path, data_dir):
    """A fresh venv (the real one: made from this Python's base interpreter with the system's
    site-packages) and a wheelhouse with nothing in it: not ready, within seconds, one line."""
    (tmp_path / "wh").mkdir()
    out = tmp_path / "out"
    env = check_env(tmp_path, data_dir, BASE_PYTHON=os.path.realpath(sys.executable), GPU_CHECK_VENV=tmp_path / "venv")
    started = time.monotonic()
    done = run_check(out, "--wheelhouse", tmp_path / "wh", env=env, timeout=300)
    took = time.monotonic() - started
    line = last_line(done.stderr)
    assert done.returncode == 3, done.stderr
    assert took < 120, took
    assert line.startswith("gpu_check: not ready: missing packages for Python "), line
    assert "dask-cuda>=24.8" in line and "bash bench/gpu_wheels.sh DIR --python" in line and "--wheelhouse DIR" in line
    assert "GPU libraries: cupy is not installed (needs the CuPy for CUDA 13, e.g. cupy-cuda13x)" in line
    assert "this script never installs the GPU libraries" in line
    assert "Traceback" not in done.stderr + done.stdout
    assert (out / "not-ready.txt").read_text().strip() == line.removeprefix("gpu_check: ")
    assert (tmp_path / "venv" / "pyvenv.cfg").read_text().count("include-system-site-packages = true") == 1
    # pip was asked, offline, and the wheelhouse had nothing
    assert "No matching distribution found" in (out / "pip-install.txt").read_text()
    assert not (out / "pytest-gpu.txt").exists()     # nothing ran past the preflight


def test_no_gpu_fails_on_the_gpu_libraries_even_with_every_package_there(tmp_path, data_dir):
    """This venv as it is (PYTHON=...), dask-cuda made to look installed: every package is there,
    only the GPU is not, and the check says so for each library instead of passing."""
    out = tmp_path / "out"
    env = check_env(tmp_path, data_dir, PYTHON=sys.executable, PYTHONPATH=stub_dask_cuda(tmp_path))
    done = run_check(out, env=env, timeout=300)
    line = last_line(done.stderr)
    assert done.returncode == 3, done.stderr
    assert line.startswith("gpu_check: not ready: GPU libraries: "), line
    assert "missing packages" not in line
    for reason in gpu_reasons():
        assert reason in line, (reason, line)
    assert "Traceback" not in done.stderr + done.stdout
    assert not (out / "pytest-gpu.txt").exists() and not list(out.glob("gpu-*.json"))


def test_a_rehearsal_runs_every_phase_and_its_summary_says_why_it_failed(tmp_path, data_dir):
    """Past the preflight (a wrapper answers it as if the GPU libraries were there; every other call
    goes to this Python), every phase runs for real. `pytest -m gpu` under MLP_REQUIRE_GPU=1: every
    GPU test would skip, so each fails. The bench (a small sweep, flags after --): its GPU rows fail.
    summary.txt names the failed tests, lists every target, the bench's problems and the result;
    the check exits 1."""
    wrapper = tmp_path / "python-fake-gpu"
    wrapper.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        if [ "${{1:-}}" = -c ] && [ "${{3:-}}" = gpu-check-preflight ]; then
            echo "cupy (fake), torch (fake), jax (fake)"; exit 0
        fi
        exec {sys.executable} "$@"
        """))
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = check_env(tmp_path, data_dir, PYTHON=wrapper, PYTHONPATH=stub_dask_cuda(tmp_path))
    done = run_check(out, "--", "--backends", "torch", "--peers", "none", "--sizes", "2000", "--hidden", "32",
                     "--no-minibatch", "--epochs", "1", "--min-epochs", "1", "--warmup", "1", env=env, timeout=500)
    assert done.returncode == 1, done.stderr[-3000:]
    assert last_line(done.stderr) == (f"gpu_check: FAILED: GPU tests (pytest exit 1: {out}/pytest-gpu.txt); the bench "
                                      f"(exit 1: {out}/bench-log.txt); the summary (exit 1: {out}/summary.txt)")
    summary = (out / "summary.txt").read_text()
    assert summary in done.stdout
    lines = summary.splitlines()
    assert lines[2].startswith("GPU tests: ") and " errors in " in lines[2] and " passed" not in lines[2], lines[2]
    assert lines[3].startswith("- ERROR tests/")         # each GPU test: a skip (in setup) failed by MLP_REQUIRE_GPU
    assert sum(line.startswith("- ") and line.endswith(": not measured") for line in lines) == len(TARGETS)
    assert "- nothing was measured on cuda: every row there was skipped or failed" in lines
    assert "- ours (torch, compiled) on cuda float32 N=2,000 H=32 B=full: error: " in summary
    assert lines[-2].startswith("Phases: setup ") and ", bench " in lines[-2] and lines[-2].endswith(" s (exit 1)")
    assert lines[-1] == (f"Result: FAILED: GPU tests (pytest exit 1: {out}/pytest-gpu.txt); the bench (exit 1: "
                         f"{out}/bench-log.txt); the summary (exit 1: {out}/summary.txt)")
    meta = json.loads((out / "gpu-h100.json").read_text())["meta"]
    assert meta["command"].startswith("python -m bench --device cuda")
    text = (out / "pytest-gpu.txt").read_text()
    assert "MLP_REQUIRE_GPU=1: this GPU test would be skipped: needs a CUDA GPU: CuPy is not installed" in text
    assert " passed" not in text.splitlines()[-1] and "deselected" in text.splitlines()[-1]
    suite = ET.parse(out / "pytest-gpu.xml").getroot().find("testsuite")
    tests, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
    assert tests > 10 and failed == tests and int(suite.get("skipped")) == 0
    phases = [line.split()[::2] for line in (out / "phases.txt").read_text().splitlines()]
    assert phases == [["setup", "0"], ["preflight", "0"], ["tests", "1"], ["bench", "1"], ["summary", "1"]]


def test_wheels_usage_errors_reach_no_network(tmp_path):
    for args, words in (((), "usage: bash bench/gpu_wheels.sh DIR"), ((tmp_path / "w", "--python", "2.7"), "got 2.7"),
                        ((tmp_path / "w", "--nope"), "unknown option --nope")):
        done = subprocess.run(["bash", str(WHEELS), *map(str, args)], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHON": str(tmp_path / "no-python")})
        assert done.returncode == 2 and words in done.stderr, done.stderr


# ----------------------------------------------------------------------------- the MLP_REQUIRE_GPU hook

HOOKED = {
    "conftest.py": ("from tests.require_gpu import pytest_make_collect_report, pytest_runtest_makereport"
                    "  # noqa: F401\n"),
    "pytest.ini": "[pytest]\nmarkers =\n    gpu: needs a GPU\n",
    "test_some.py": textwrap.dedent("""\
        import pytest

        @pytest.mark.gpu
        def test_gpu_skips_in_its_body():
            pytest.skip("no CUDA here")

        @pytest.mark.gpu
        @pytest.mark.skipif(True, reason="needs a CUDA GPU: CuPy is not installed")
        def test_gpu_skipif():
            pass

        @pytest.fixture
        def data():
            pytest.skip("no data")

        @pytest.mark.gpu
        def test_gpu_fixture_skips(data):
            pass

        def test_cpu_skips():
            pytest.skip("a CPU reason")

        @pytest.mark.gpu
        @pytest.mark.xfail(reason="known")
        def test_gpu_xfail():
            assert False

        @pytest.mark.gpu
        def test_gpu_passes():
            pass
        """),
}


HOOKED["test_skipped_whole.py"] = textwrap.dedent("""\
    import pytest
    pytest.importorskip("no_such_module_for_mlp", reason="needs no_such_module_for_mlp")

    @pytest.mark.gpu
    def test_on_the_gpu():
        pass
    """)


def run_hooked(folder: Path, require: bool) -> tuple[subprocess.CompletedProcess, dict]:
    """pytest in a folder whose conftest takes the two hooks of tests/require_gpu.py, as
    tests/conftest.py does (without the libraries that conftest imports): the run, and the outcome
    and message of each test by name."""
    folder.mkdir()
    for name, text in HOOKED.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MLP_REQUIRE_GPU"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if require:
        env["MLP_REQUIRE_GPU"] = "1"
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rA",
                           "--continue-on-collection-errors", "--junitxml", str(folder / "r.xml"),
                           "-o", "junit_family=xunit2"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    outcomes = {}
    for case in ET.parse(folder / "r.xml").getroot().iter("testcase"):
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = (bad[0].tag, bad[0].get("message") or "") if bad else ("passed", "")
    return done, outcomes


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    """The same tests run twice: with MLP_REQUIRE_GPU=1 and without."""
    folder = tmp_path_factory.mktemp("hooked")
    return {require: run_hooked(folder / ("require" if require else "plain"), require) for require in (True, False)}


def test_the_suite_takes_the_hooks_tested_here():
    from . import conftest, require_gpu

    assert conftest.pytest_runtest_makereport is require_gpu.pytest_runtest_makereport
    assert conftest.pytest_make_collect_report is require_gpu.pytest_make_collect_report


def test_require_gpu_turns_a_gpu_skip_into_a_failure_with_its_reason(hooked):
    done, got = hooked[True]
    assert done.returncode == 1, done.stdout[-2000:]
    want = "MLP_REQUIRE_GPU=1: this GPU test would be skipped: "
    assert got["test_gpu_skips_in_its_body"] == ("failure", want + "no CUDA here")
    # a skip in setup (a skipif mark, a fixture) fails the setup: JUnit calls that an error
    assert got["test_gpu_skipif"] == ("error", f'failed on setup with "{want}needs a CUDA GPU: CuPy is not installed"')
    assert got["test_gpu_fixture_skips"] == ("error", f'failed on setup with "{want}no data"')
    assert got["test_cpu_skips"] == ("skipped", "a CPU reason")   # not marked gpu: still a skip
    assert got["test_gpu_xfail"][0] == "skipped"                  # an expected failure stays one (JUnit: skipped)
    assert got["test_gpu_passes"] == ("passed", "")
    assert "XFAIL test_some.py::test_gpu_xfail" in done.stdout


def test_require_gpu_fails_a_module_skipped_whole(hooked):
    done, _ = hooked[True]
    assert "ERROR test_skipped_whole.py - MLP_REQUIRE_GPU=1" in done.stdout
    assert ("MLP_REQUIRE_GPU=1: test_skipped_whole.py would be skipped whole: needs no_such_module_for_mlp"
            in done.stdout)
    done, _ = hooked[False]
    assert "SKIPPED [1] test_skipped_whole.py:2: needs no_such_module_for_mlp" in done.stdout


def test_without_require_gpu_a_gpu_skip_stays_a_skip(hooked):
    done, got = hooked[False]
    assert done.returncode == 0, done.stdout[-2000:]
    assert got["test_gpu_skips_in_its_body"] == ("skipped", "no CUDA here")
    assert got["test_gpu_skipif"] == ("skipped", "needs a CUDA GPU: CuPy is not installed")
    assert got["test_gpu_fixture_skips"] == ("skipped", "no data")
    assert got["test_cpu_skips"] == ("skipped", "a CPU reason")
    assert got["test_gpu_passes"] == ("passed", "")


# ----------------------------------------------------------------------------- the summary's targets
# `python -m bench --summary`, which gpu_check.sh copies into summary.txt, on made-up records
# (device "cuda", obviously round figures): they test the arithmetic, not a GPU.


def record(impl="ours", backend="cupy", engine="eager", batch=None, n=12_396, hidden=1024, dtype="float32",
           device="cuda", ms=10.0, loss=0.7, rel=2e-5, **more):
    """A made-up bench row whose first loss the bench found `rel` away from float64 NumPy's (None: unchecked)."""
    checked = {} if rel is None else {"loss_check": "ok" if rel <= 1e-4 else "MISMATCH", "initial_loss_rel_diff": rel,
                                      "reference_loss": loss / (1 + rel)}
    return {"impl": impl, "backend": backend, "engine": engine, "batch": batch, "device": device, "dtype": dtype,
            "n": n, "hidden": hidden, "status": "ok", "median_ms": ms, "initial_loss": loss, **checked, **more}


def write(tmp_path, name, records, command="python -m bench (test data)"):
    path = tmp_path / name
    path.write_text(json.dumps({"meta": {"command": command, "gpus": ["made-up GPU"], "real_rows": 12_396},
                                "records": records}))
    return path


def summarize(path, *flags) -> tuple[int, str, str]:
    from mlp.bench import cli

    return call_cli(cli.main, "--summary", path, *flags)


GPU_ROWS = [
    record(backend="jax", engine="compiled", batch=64, hidden=128, ms=5.0),
    record(backend="torch", engine="compiled", batch=64, hidden=128, ms=25.0),
    record(batch=64, hidden=128, ms=100.0),
    record(ms=2.0),
    record(impl="torch-expert", backend=None, engine=None, ms=2.0),
    record(n=1_000_000, ms=100.0, fraction_of_floor=0.7, floor_ms=70.0),
    record(n=1_000_000, backend="torch", ms=100.0, fraction_of_floor=None, floor_ms=None),
    record(impl="torch-expert", backend=None, engine=None, n=1_000_000, ms=80.0, fraction_of_floor=0.9, floor_ms=70.0),
    {**record(backend="jax", engine="eager", batch=64, hidden=128), "status": "skipped", "reason": "made up"},
]


def test_summary_reports_each_target_met_or_missed(tmp_path):
    code, text, err = summarize(write(tmp_path, "g.json", GPU_ROWS))
    assert code == 0 and err == "", err
    b64, full = "on cuda float32 N=12,396 H=128 B=64", "on cuda float32 N=any H=any B=full"
    for line in (f"- ours (jax, compiled) {b64}: at most 6 ms per epoch: ours (jax, compiled) took 5.00 ms; "
                 "spread 5.00–5.00 ms: met",
                 f"- ours (torch, compiled) {b64}: at most 20 ms per epoch: ours (torch, compiled) took 25.00 ms; "
                 "spread 25.00–25.00 ms: MISSED",
                 f"- ours (cupy, eager) {b64}: at most 150 ms per epoch: ours (cupy, eager) took 100.00 ms; "
                 "spread 100.00–100.00 ms: met",
                 f"- ours (cupy, eager) {full}: at most 1.15× torch-expert's time: ours (cupy, eager) on cuda float32 "
                 "N=12,396 H=1024 B=full took 1.00× torch-expert's time (as fast); spread 1.00–1.00×: met",
                 f"- ours (cupy, eager) {full}: at most 1.15× torch-expert's time: ours (cupy, eager) on cuda float32 "
                 "N=1,000,000 H=1024 B=full took 1.25× torch-expert's time (torch-expert is 1.25× faster); "
                 "spread 1.25–1.25×: MISSED",
                 "- each of ours on cuda float32 N=1,000,000 H=1024 B=full: at most 1.67× the floor's time: ours "
                 "(cupy, eager) took 1.43× the floor's time (100.00 ms against 70.00 ms); spread 1.43–1.43×: met",
                 "- each of ours on cuda float32 N=1,000,000 H=1024 B=full: at most 1.67× the floor's time: ours "
                 "(torch, eager): no floor (no GEMM probe on cuda in this run): not measured",
                 "- the default job on cpu float32 N=12,396 H=128 B=64 beside K (one per usable core) competing "
                 "processes: at most 2.50× its idle time: no such row in this run: not measured",
                 "Problems: none"):
        assert line in text.splitlines(), (line, text)
    assert text.startswith("Bench: `python -m bench (test data)`")


def test_summary_fails_on_an_unchecked_or_mismatched_row_and_an_error(tmp_path):
    rows = [*GPU_ROWS, record(n=100_000, ms=9.0, rel=None),
            record(n=12_396, hidden=1024, backend="torch", loss=0.8, rel=0.14),
            {**record(hidden=512), "status": "error", "reason": "worker exited 1: boom"}]
    code, text, _ = summarize(write(tmp_path, "g.json", rows))
    assert code == 1
    assert ("- ours (cupy, eager) on cuda float32 N=100,000 H=1024 B=full: its first step's loss was not checked "
            "against float64 NumPy") in text.splitlines()
    assert "- ours (torch, eager) on cuda float32 N=12,396 H=1024 B=full: first step's loss 0.8 is 0.14 away" in text
    assert "- ours (cupy, eager) on cuda float32 N=12,396 H=512 B=full: error: worker exited 1: boom" in text
    # a sweep that measured nothing on the GPU cannot pass by skipping
    code, text, _ = summarize(write(tmp_path, "s.json", [GPU_ROWS[-1]]))
    assert code == 1 and "- nothing was measured on cuda: every row there was skipped or failed" in text


def test_summary_refuses_what_is_not_a_bench_json_in_one_line(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    row = {"status": "ok", "impl": "ours", "backend": "cupy", "device": "cuda", "dtype": "float32", "n": 12_396,
           "hidden": 128, "batch": 64}   # no median_ms
    (tmp_path / "bad.json").write_text(json.dumps({"meta": {"real_rows": 12_396}, "records": [row]}))
    for path, words in ((tmp_path / "none.json", "cannot read"), (tmp_path / "list.json", "is not a bench JSON"),
                        (tmp_path / "bad.json", "is not a bench JSON (KeyError")):
        code, out, err = summarize(path)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and words in err, err
    code, _, err = summarize(tmp_path / "list.json", "--quick")
    assert code == 2 and err.strip() == ("bench: error: --summary reads a run's JSON and measures nothing: "
                                         "drop --quick")
