"""Child-process hygiene shared by the Triton launcher and the worker supervisor."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child: be killed when the parent dies, so nothing is ever orphaned (Linux)."""
    with contextlib.suppress(OSError):  # not Linux: the parent's normal shutdown still stops it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
