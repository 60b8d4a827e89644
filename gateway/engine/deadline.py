"""How long a token stream may wait on its upstream: first token, then between responses.

One timer per stream, re-armed lazily: per response the stream only records the time
(:meth:`StreamDeadline.waiting` / :meth:`StreamDeadline.answered`), and the timer, when it fires,
either finds the stream answered since and sleeps again, or finds it still waiting past its limit
and calls ``on_expiry`` (which cancels the upstream call). Only time spent waiting on the upstream
counts: a stream held up by a slow client is not the upstream's fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class StreamDeadline:
    __slots__ = ("_handle", "_idle", "_limit", "_loop", "_on_expiry", "_since", "_waiting", "expired")

    def __init__(self, first_token: float, idle: float, on_expiry: Callable[[], object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self._limit = first_token  # until the first response, then ``idle``
        self._since = self._loop.time()
        self._waiting = True
        self._on_expiry = on_expiry
        self.expired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self._since + first_token, self._fire)

    @property
    def limit(self) -> float:
        """The limit that applies now (seconds): the first token's until it came, then idle."""
        return self._limit

    def waiting(self) -> None:
        """The stream is about to wait on its upstream (per response: two attribute writes)."""
        self._waiting = True
        self._since = self._loop.time()

    def answered(self) -> None:
        """A response came: waits from now on are held to the idle limit."""
        self._waiting = False
        self._limit = self._idle

    def cancel(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _fire(self) -> None:
        now = self._loop.time()
        due = self._since + self._limit
        if self._waiting and now >= due:
            self._handle = None
            self.expired = True
            self._on_expiry()
            return
        self._handle = self._loop.call_at(due if self._waiting else now + self._limit, self._fire)
