"""Test aid: `dask scheduler` and `dask worker` processes on 127.0.0.1, each in its own session,
stopped (the whole process group, SIGKILL after 10 s) when the `Procs` context ends, also when the
test fails; and an interpreter in which `import mlp` fails (a worker "without the package")."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NO_MLP = '''# test aid: `import mlp` fails in this interpreter, however mlp-by-hand is installed
import sys


class _NoMlp:
    def find_spec(self, name, path=None, target=None):
        if name == "mlp" or name.startswith("mlp."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoMlp())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_mlp_env(folder: Path) -> dict:
    """Environment variables under which a Python process cannot import mlp (a sitecustomize)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(NO_MLP)
    return {"PYTHONPATH": str(folder)}


class Procs:
    """Started processes of one test: `scheduler()` returns its address, `worker(address)` its Popen."""

    def __init__(self, workdir: Path):
        self.workdir, self.procs = workdir, []

    def _start(self, module: str, args: list, env: dict | None):
        full = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
        full.update(env or {})
        p = subprocess.Popen([sys.executable, "-m", f"distributed.cli.{module}", *args], cwd=self.workdir, env=full,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def scheduler(self, env: dict | None = None) -> tuple[str, subprocess.Popen]:
        port = free_port()
        p = self._start("dask_scheduler", ["--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env)
        return f"tcp://127.0.0.1:{port}", p

    def worker(self, address: str, env: dict | None = None, nanny: bool = False) -> subprocess.Popen:
        return self._start("dask_worker", [address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1",
                                           "--no-dashboard", "--local-directory", str(self.workdir),
                                           *([] if nanny else ["--no-nanny"])], env)

    def stop(self, p: subprocess.Popen, sig=signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def close(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


@contextlib.contextmanager
def procs(workdir: Path):
    started = Procs(workdir)
    try:
        yield started
    finally:
        started.close()


def wait_workers(address: str, n: int, timeout: float = 60) -> list[str]:
    """Wait until the scheduler at `address` has `n` workers; their addresses."""
    from distributed import Client

    deadline = time.monotonic() + timeout
    with Client(address, timeout=timeout, set_as_default=False) as c:
        while len(c.scheduler_info(n_workers=-1)["workers"]) != n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not reach {n} workers in {timeout} s")
            time.sleep(0.1)
        return sorted(c.scheduler_info(n_workers=-1)["workers"])


@contextlib.contextmanager
def environ_kept():
    """os.environ as it was on entry, again on exit (around a LocalCluster of one's own: distributed's
    Nanny writes its workers' settings into the environment of the process that hosts it)."""
    from mlp.backends.dask_connect import restore_environ

    saved = dict(os.environ)
    try:
        yield
    finally:
        restore_environ(saved)
