"""Process lifecycle: serving, then draining on SIGTERM (no new work, in-flight work finishes).

One per process, shared by REST and gRPC: the generate path counts active generations here, the
transports refuse new requests while draining, and the server waits for idle before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.errors import ShuttingDown


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle: asyncio.Event | None = None

    def accept(self) -> None:
        """Raise 503 for new work once draining has begun."""
        if self.draining:
            raise ShuttingDown("The server is shutting down; retry on another replica.", retry_after=1.0)

    def begin(self) -> None:
        self.active += 1

    def end(self) -> None:
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, within: float) -> bool:
        """Stop accepting; wait until every generation has ended. False if the timeout passed first."""
        self.draining = True
        if self.active == 0:
            return True
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)
        return self.active == 0


LIFECYCLE = Lifecycle()
