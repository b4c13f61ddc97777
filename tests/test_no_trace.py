"""The check in tests/conftest.py that every test leaves the process's global state as it found it:
it sees each kind of change, names it, and fails the test."""

from __future__ import annotations

import io
import signal
import sys
import warnings

import pytest

from .conftest import assert_unchanged, changed_state, global_state, thread_pools


def test_each_change_is_seen_and_named(tmp_path, monkeypatch):
    before, limit = global_state(), sys.getrecursionlimit()
    monkeypatch.setenv("MLP_NO_TRACE", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(warnings, "filters", [("ignore", None, Warning, None, 0), *warnings.filters])
    monkeypatch.setattr(sys, "unraisablehook", print)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    previous = signal.signal(signal.SIGUSR1, print)
    sys.setrecursionlimit(limit + 1000)
    try:
        lines = changed_state(before, global_state())
    finally:
        signal.signal(signal.SIGUSR1, previous)
        sys.setrecursionlimit(limit)
    assert [line.split(":")[0] for line in lines] == [name for name in before if name != "thread pools"]
    assert f"sys.getrecursionlimit(): {limit} -> {limit + 1000}" in lines
    assert "os.environ: MLP_NO_TRACE None -> '1'" in lines
    assert "warnings.filters: +('ignore', None, <class 'Warning'>, None, 0)" in lines
    assert f"signal handlers: SIGUSR1 {previous!r} -> {print!r}" in lines


def test_a_change_fails_the_test_naming_it():
    before = global_state()
    before["sys.getrecursionlimit()"] -= 1
    with pytest.raises(pytest.fail.Exception, match=r"^a test left global state changed .*\n  sys.getrecursionlimit"):
        assert_unchanged(before, "a test")
    assert_unchanged(global_state(), "a test")


def test_thread_pools_are_read_and_one_loaded_meanwhile_is_no_change():
    pools = thread_pools()
    assert pools and all(isinstance(n, int) and n >= 1 for n in pools.values())
    assert "torch.get_num_threads()" in pools            # torch is imported by conftest
    was = {"thread pools": pools}
    assert changed_state(was, {"thread pools": {**pools, "/lib/libgomp.so.1": 3}}) == []
    path = next(iter(pools))
    assert changed_state(was, {"thread pools": {**pools, path: pools[path] + 1}}) == [
        f"thread pools: {path} {pools[path]} -> {pools[path] + 1}"]
