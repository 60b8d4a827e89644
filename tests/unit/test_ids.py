"""Request and response ids: secrets.token_hex's format, unique, and not repeated by a forked child."""

from __future__ import annotations

import os
import re

from gateway.core.ids import random_hex


def test_format_is_token_hexs() -> None:
    for nbytes in (4, 12, 16):
        value = random_hex(nbytes)
        assert re.fullmatch(f"[0-9a-f]{{{2 * nbytes}}}", value), value


def test_ids_do_not_repeat() -> None:
    ids = {random_hex(12) for _ in range(100_000)}
    assert len(ids) == 100_000


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(random_hex(12) for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {random_hex(12) for _ in range(8)}
    assert len(child) == 8 and not child & parent
