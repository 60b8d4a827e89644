"""Child-process hygiene shared by the Triton launcher and the worker supervisor."""

from __future__ import annotations

import ctypes
import shutil
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1

# resolved here, in the parent: a forked child of a threaded process must not dlopen (loader locks)
_prctl: ctypes._NamedFuncPointer | None
try:
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not Linux: the parent's normal shutdown still stops its children
    _prctl = None


def die_with_parent() -> None:
    """In a child (preexec_fn): be killed when the parent dies, so nothing is ever orphaned (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def launch_dying_with_parent(cmd: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``cmd`` and the ``preexec_fn`` that make a child die with this process.

    util-linux's setpriv sets the signal between fork and exec, so no Python runs in the forked child:
    safe while other threads (gRPC's) run, where a preexec_fn can crash the child. Without setpriv,
    the preexec_fn does it. Linux sends the signal when the *thread* that launched the child ends, so
    launch from a thread that outlives the child (the main thread, or the Triton supervisor's).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--", *cmd], None
    return cmd, die_with_parent
