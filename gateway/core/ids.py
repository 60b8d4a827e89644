"""Ids of requests and responses (``req_…``, ``chatcmpl-…``): random hex, unique in practice, not secrets.

``secrets.token_hex`` asks the kernel for fresh bytes on every call (a ``getrandom`` system call; a
request takes two ids). These come from a generator seeded by the kernel once per process (and again
in a forked child), which is as unique and costs no system call. API keys and anything else that must
not be guessed keep using :mod:`secrets`.
"""

from __future__ import annotations

import os
import random

_rng = random.Random()


def _reseed() -> None:
    _rng.seed(os.urandom(32))


_reseed()
os.register_at_fork(after_in_child=_reseed)  # a forked child must not repeat its parent's ids


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as ``2 * nbytes`` lowercase hex digits (as ``secrets.token_hex``)."""
    return f"{_rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"
