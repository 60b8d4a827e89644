"""Per upstream model: a cap on requests in flight and a short bounded wait queue.

Beyond the queue, or after waiting ``queue_timeout``, a request is refused at once with 503 and
Retry-After: overload is answered in milliseconds instead of piling up inside the gateway.

Batch lines (:mod:`gateway.batches`) are a second, lower priority class: one starts only while no
interactive request waits and fewer than the high-water mark of requests (both classes) are in
flight, so interactive traffic displaces batch work instead of queueing behind it. A waiting
interactive request always takes a freed slot before a waiting batch line. Batch lines wait as
long as it takes (no queue limit, no timeout: the batch runner bounds how many it sends).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from gateway.core.types import RequestStats
from gateway.errors import Overloaded
from gateway.observability.metrics import QUEUE_WAIT, child

# an uncapped model's high-water mark: batch lines start while fewer requests than this are in flight
DEFAULT_BATCH_HIGH_WATER = 4


def batch_high_water(max_in_flight: int | None, given: int | None = None) -> int:
    """Requests in flight (interactive and batch) at which batch lines wait: ``given``, else a quarter
    of a capped model's slots kept for interactive requests (at least one slot for batch)."""
    if given is None:
        if max_in_flight is None:
            return DEFAULT_BATCH_HIGH_WATER
        given = max(1, max_in_flight - max(1, max_in_flight // 4))
    return given if max_in_flight is None else min(given, max_in_flight)


class Admission:
    def __init__(
        self,
        model: str,
        max_in_flight: int | None,
        max_queue: int,
        queue_timeout: float,
        batch_high_water_mark: int | None = None,
    ) -> None:
        self._model = model
        self._max = max_in_flight
        self._max_queue = max_queue
        self._timeout = queue_timeout
        self._in_flight = 0  # both classes
        self._waiting = 0  # interactive requests waiting for a slot
        self._freed = asyncio.Condition()
        self._high = batch_high_water(max_in_flight, batch_high_water_mark)
        self._batch_waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.asynccontextmanager
    async def slot(self, stats: RequestStats | None = None) -> AsyncIterator[None]:
        if stats is not None and stats.batch:
            async with self._batch_slot(stats):
                yield
            return
        if self._max is None:  # counted only for the batch class's high-water mark
            self._in_flight += 1
            try:
                yield
            finally:
                self._in_flight -= 1
                if self._batch_waiters:
                    self._wake_batch()
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
            await self._release()

    async def _release(self) -> None:
        self._in_flight -= 1
        if self._waiting:
            async with self._freed:
                self._freed.notify()
        elif self._batch_waiters:
            self._wake_batch()

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
            if not self._waiting and self._batch_waiters:  # the last waiter gave up: batch may go on
                self._wake_batch()

    def _batch_may_start(self) -> bool:
        return not self._waiting and self._in_flight < self._high

    def _wake_batch(self) -> None:
        """Let the first waiting batch line try again, when a batch line may start now."""
        while self._batch_waiters and self._batch_may_start():
            waiter = self._batch_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @contextlib.asynccontextmanager
    async def _batch_slot(self, stats: RequestStats) -> AsyncIterator[None]:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        while not self._batch_may_start():
            waiter: asyncio.Future[None] = loop.create_future()
            self._batch_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_batch()  # this line was woken as it went away: pass the turn on
                else:
                    with contextlib.suppress(ValueError):
                        self._batch_waiters.remove(waiter)
                raise
        stats.queue_wait = time.monotonic() - started
        self._in_flight += 1
        try:
            yield
        finally:
            await self._release()
