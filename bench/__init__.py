"""The benchmark suite: `python -m bench` (see bench/__main__.py and the README)."""

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1   # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Called first by every process the bench starts (`parent`: the bench's process id): Linux
    sends it SIGKILL when the bench ends, however it ends; if the bench ended before the request
    took effect, it ends at once. Elsewhere (no prctl) nothing happens."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
