"""The bench's busy-machine scenario (bench/busy.py): its competing processes are started, bounded
in time and always stopped; its table on made-up records; `--busy` end to end on a tiny sweep.
No timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mlp.bench import busy, report

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


def test_busy_table_puts_the_default_job_first_with_its_targets():
    idle = [_rec("torch-expert", 40.0, threads=2), _rec("ours", 100.0)]
    loaded = [_rec("ours", 120.0, 1), _rec("ours", 300.0, 2), _rec("torch-expert", 400.0, 1, threads=2)]
    lines = busy.table(idle, loaded, report.label)
    assert lines[0].startswith("| row | N | H | B | threads | idle ms (load) | 1 competitor: ms (× idle) | "
                               "2 competitors: ms (× idle) |")
    assert lines[2] == ("| **default job** ours (numpy, eager) | 12,396 | 128 | 64 | 1 | 100.0 (load 1.0) | "
                        "120.0 (1.20×) | 300.0 (3.00×) |")
    assert lines[3] == "| torch-expert | 12,396 | 128 | 64 | 2 | 40.0 (load 1.0) | 400.0 (10.00×) | – |"
    assert "- default job beside 1 competitor: 1.20× its idle time (target ≤ 1.3×): met" in lines
    assert "- default job beside 2 competitors: 3.00× its idle time (target ≤ 2.5×): MISSED" in lines
    assert busy.table(idle, [], report.label) == []


def test_parity_target_takes_the_best_of_ours_and_of_the_expert():
    records = [_rec("ours", 50.0), _rec("ours", 30.0, backend="jax", engine="compiled"), _rec("torch-expert", 40.0),
               _rec("torch-expert", 35.0, threads_requested=1), _rec("ours", 20.0, batch=None),
               _rec("torch-expert", 19.0, batch=None)]
    (b64, text64, met64), (full, text_full, met_full) = report.parity(records, 12_396)
    assert "B=64" in b64 and met64 and text64 == ("ours (jax, compiled) 30.0 ms vs torch-expert [1 thread] 35.0 ms "
                                                   "= 0.86x")
    assert "B=full" in full and not met_full and text_full.endswith("= 1.05x")


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
