"""The bench's busy-machine scenario (bench/busy.py): its competing processes are started, bounded
in time and always stopped, also when the bench is killed; its table and targets on made-up
records; `--busy` end to end on a tiny sweep. No timing is asserted."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mlp.bench import busy, report, targets

from .conftest import REPO


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie has ended
    except FileNotFoundError:
        return False


def test_levels():
    assert busy.levels(2) == [0, 1, 2]
    assert busy.levels(1) == [0, 1]
    assert busy.levels(8) == [0, 1, 8]


def test_competitors_run_in_their_own_group_and_are_killed():
    with busy.Competitors(2, seconds=120) as c:
        pids = [p.pid for p in c.procs]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        assert all(os.getpgid(pid) == pid for pid in pids)            # a group each: killpg reaches all of it
    assert all(p.returncode is not None for p in c.procs)           # reaped, not left as zombies
    assert not any(_alive(pid) for pid in pids)


def test_competitors_are_killed_when_the_measurement_fails():
    with pytest.raises(RuntimeError, match="worker broke"):
        with busy.Competitors(1, seconds=120) as c:
            pid = c.procs[0].pid
            raise RuntimeError("worker broke")
    assert not _alive(pid) and c.procs[0].returncode is not None


def test_competitors_end_by_themselves_at_their_deadline():
    c = busy.Competitors(1, seconds=1)
    c.__enter__()                                                    # never stopped by us
    try:
        assert c.procs[0].wait(timeout=60) == 0                      # the loop ended at its deadline
    finally:
        c.stop()


def test_measure_runs_beside_the_competitors_asked_for():
    seen = {}

    def fake_worker(spec, timeout):
        me = os.getpid()
        children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == me and _alive(int(p))
                    and "time.monotonic()" in _read(p, "cmdline")]      # competitors, not e.g. a resource tracker
        seen[spec["busy"]] = (children, timeout)
        return {"status": "ok", "busy": spec["busy"]}

    for k in (0, 2):
        assert busy.measure(fake_worker, {"busy": k}, timeout=30) == {"status": "ok", "busy": k}
        children, _ = seen[k]
        assert len(children) == k
        assert not any(_alive(pid) for pid in children)


def _until(found, seconds: float):
    """Poll found() until it gives something true, for at most `seconds`; its last answer."""
    deadline = time.monotonic() + seconds
    while not (answer := found()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return answer


def test_a_killed_bench_takes_its_competitor_and_its_worker_with_it(data_dir):
    """SIGKILL leaves the bench no time to stop anything: its competitor (deadline 660 s) and its worker
    (10**9 epochs, which only the bench's 600 s timeout would stop) go with it all the same."""
    spec = {"mode": "measure", "impl": "ours", "backend": "numpy", "engine": "eager", "batch": None, "device": "cpu",
            "dtype": "float32", "n": 500, "hidden": 8, "epochs": 10**9, "min_epochs": 10**9, "budget_s": 600,
            "warmup": 1, "lr": 0.1, "seed": 0, "data_dir": str(data_dir), "threads_requested": "auto", "busy": 1}
    code = ("import json, sys; from mlp.bench import busy, cli; "
            "busy.measure(cli.run_worker, json.loads(sys.argv[1]), 600)")
    bench = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = []
    try:
        def started():   # the competitor, then the worker, measuring: 3 s of CPU time (imports, data: ~1 s)
            children[:] = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == bench.pid]
            return len(children) == 2 and "mlp.bench.worker" in _read(str(children[1]), "cmdline") and \
                int(_read(str(children[1]), "stat").rsplit(")", 1)[1].split()[11]) > 3 * os.sysconf("SC_CLK_TCK")
        assert _until(started, 120), [_read(str(p), "cmdline") for p in children]
        assert "time.monotonic() + 660" in _read(str(children[0]), "cmdline")
        bench.kill()
        bench.wait(timeout=30)
        assert _until(lambda: not any(_alive(p) for p in children), 10), \
            [_read(str(p), "cmdline")[:80] for p in children if _alive(p)]
    finally:
        bench.kill()
        bench.wait(timeout=30)
        for pid in children:                          # on failure: nothing left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def _rec(impl, ms, busy_k=0, backend="numpy", engine="eager", batch=64, threads=1, **kw):
    return {"impl": impl, "backend": backend if impl == "ours" else "torch",
            "engine": engine if impl == "ours" else None,
            "device": "cpu", "dtype": "float32", "n": 12_396, "hidden": 128, "batch": batch, "busy": busy_k,
            "threads_requested": "auto", "threads": threads, "status": "ok", "median_ms": ms,
            "load_avg": [1.0, 1.0, 1.0], **kw}


def test_busy_table_puts_the_default_job_first_and_its_targets_are_the_benchs():
    idle = [_rec("torch-expert", 40.0, threads=2), _rec("ours", 100.0)]
    loaded = [_rec("ours", 120.0, 1), _rec("ours", 300.0, 2), _rec("torch-expert", 400.0, 1, threads=2)]
    lines = busy.table(idle, loaded, report.label)
    assert lines[0].startswith("| row | N | H | B | threads | idle ms (load) | 1 competitor: ms (× idle) | "
                               "2 competitors: ms (× idle) |")
    assert lines[2] == ("| **default job** ours (numpy, eager) | 12,396 | 128 | 64 | 1 | 100.0 (load 1.0) | "
                        "120.0 (1.20×) | 300.0 (3.00×) |")
    assert lines[3] == "| torch-expert | 12,396 | 128 | 64 | 2 | 40.0 (load 1.0) | 400.0 (10.00×) | – |"
    assert len(lines) == 4 and busy.table(idle, [], report.label) == []     # the verdicts: targets.py's
    found = targets.lines({"records": idle, "busy": loaded, "meta": {"real_rows": 12_396, "usable_cores": 2}})
    job = "- the default job on cpu float32 N=12,396 H=128 B=64 beside"
    assert (f"{job} 1 competing process: at most 1.30× its idle time: ours (numpy, eager) took 1.20× its idle time "
            "(100.0 ms idle); spread 1.20–1.20×: met") in found
    assert f"{job} 2 competing processes: at most 2.50× its idle time: ours (numpy, eager)" in "".join(found)
    assert [line.rsplit(": ", 1)[1] for line in found if line.startswith(job)] == ["met", "MISSED"]


def test_parity_target_takes_the_best_of_ours_and_of_the_expert():
    records = [_rec("ours", 50.0), _rec("ours", 30.0, backend="jax", engine="compiled"), _rec("torch-expert", 40.0),
               _rec("torch-expert", 35.0, threads_requested=1), _rec("ours", 20.0, batch=None),
               _rec("torch-expert", 19.0, batch=None)]
    found = [v for v in targets.verdicts({"records": records, "meta": {"real_rows": 12_396}})
             if v["target"].startswith("the fastest of ours") and v["verdict"] != "not measured"]   # no Adam here
    assert [(v["target"].split(" B=")[1].split(":")[0], v["verdict"]) for v in found] == [("64", "met"),
                                                                                         ("full", "MISSED")]
    assert found[0]["measured"] == ("ours (jax, compiled) took 0.86× torch-expert [1 thread]'s time (it is 1.17× "
                                    "faster); spread 0.86–0.86×")


def test_busy_bench_end_to_end(data_dir, tmp_path):
    """`--busy` on one core (taskset): the levels are then 0 and 1 (one per usable core), each row
    idle and beside one competitor, which shares that core with the bench and leaves the others
    to the rest of the suite."""
    tag = f"{os.getpid()}-{tmp_path.name}"     # in the environment of this bench and its competitors only
    pin = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] if shutil.which("taskset") else []
    args = ["--quick", "--busy", "--backends", "numpy", "--peers", "none", "--no-minibatch",
            "--json", tmp_path / "b.json", "--markdown", tmp_path / "b.md", "--data-dir", data_dir]
    env = {k: v for k, v in os.environ.items() if k != "MLP_DATA_DIR"}
    result = subprocess.run([*pin, sys.executable, "-m", "bench", *map(str, args)], cwd=REPO,
                            env={**env, "MLP_BUSY_TEST_TAG": tag}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "b.json").read_text())
    levels = busy.levels(out["meta"]["usable_cores"])
    assert out["meta"]["usable_cores"] == 1 or not pin
    assert [r["busy"] for r in out["records"]] == [0]                 # the usual tables: idle runs only
    assert [r["busy"] for r in out["busy"]] == levels[1:]
    for r in out["records"] + out["busy"]:
        assert r["status"] == "ok", r
        assert r["threads"] == 1 and r["threads_requested"] == "auto" and len(r["load_avg"]) == 3
    table = (tmp_path / "b.md").read_text()
    assert "Busy machine: median ms per epoch idle and beside K CPU-bound competing processes" in table
    assert "| ours (numpy, eager) | 2,000 | 32 | full | 1 |" in table
    # none of its competitors (deadline: the worker's 600 s + 60) outlived the bench
    assert not [p for p in os.listdir("/proc") if p.isdigit() and "time.monotonic() + 660" in _read(p, "cmdline")
                and f"MLP_BUSY_TEST_TAG={tag}" in _read(p, "environ") and _alive(int(p))]


def _read(pid: str, name: str) -> str:
    """/proc/PID/cmdline or environ, its NUL separators as spaces ('' once the process is gone)."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
