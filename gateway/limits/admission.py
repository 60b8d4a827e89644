"""Per upstream model: a cap on requests in flight and a short bounded wait queue.

Beyond the queue, or after waiting ``queue_timeout``, a request is refused at once with 503 and
Retry-After: overload is answered in milliseconds instead of piling up inside the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from gateway.core.types import RequestStats
from gateway.errors import Overloaded
from gateway.observability.metrics import QUEUE_WAIT, child


class Admission:
    def __init__(self, model: str, max_in_flight: int | None, max_queue: int, queue_timeout: float) -> None:
        self._model = model
        self._max = max_in_flight
        self._max_queue = max_queue
        self._timeout = queue_timeout
        self._in_flight = 0
        self._waiting = 0
        self._freed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def slot(self, stats: RequestStats | None = None) -> AsyncIterator[None]:
        if self._max is None:
            yield
            return
        started = time.monotonic()
        if self._in_flight >= self._max:
            await self._wait()
        waited = time.monotonic() - started
        child(QUEUE_WAIT, self._model).observe(waited)
        if stats is not None:
            stats.queue_wait = waited
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            async with self._freed:
                self._freed.notify()

    async def _wait(self) -> None:
        if self._waiting >= self._max_queue:
            raise Overloaded(
                f"The model '{self._model}' is at capacity ({self._max} requests in flight, "
                f"{self._max_queue} waiting). Please retry shortly.",
                retry_after=1.0,
            )
        self._waiting += 1
        try:
            async with self._freed:
                await asyncio.wait_for(self._freed.wait_for(lambda: self._in_flight < (self._max or 0)), self._timeout)
        except TimeoutError:
            raise Overloaded(
                f"The model '{self._model}' stayed at capacity for {self._timeout:g}s. Please retry shortly.",
                retry_after=1.0,
            ) from None
        finally:
            self._waiting -= 1
