"""StreamDeadline: only time spent waiting on the upstream counts, first-token limit then idle."""

from __future__ import annotations

import asyncio

from gateway.engine.deadline import StreamDeadline


async def test_waiting_past_the_first_token_limit_expires() -> None:
    fired = asyncio.Event()
    deadline = StreamDeadline(0.05, 30.0, fired.set)
    await asyncio.wait_for(fired.wait(), 30)
    assert deadline.expired and deadline.limit == 0.05


async def test_time_not_spent_waiting_does_not_count() -> None:
    fired = asyncio.Event()
    deadline = StreamDeadline(0.02, 0.02, fired.set)
    deadline.answered()  # a response came; the consumer now takes its time (a slow client)
    await asyncio.sleep(0.2)
    assert not deadline.expired
    deadline.waiting()
    deadline.answered()  # answered at once
    await asyncio.sleep(0.1)
    assert not deadline.expired
    deadline.waiting()  # and now the upstream goes silent
    await asyncio.wait_for(fired.wait(), 30)
    assert deadline.expired


async def test_cancel_stops_the_timer() -> None:
    fired = asyncio.Event()
    deadline = StreamDeadline(0.02, 0.02, fired.set)
    deadline.cancel()
    await asyncio.sleep(0.1)
    assert not deadline.expired and not fired.is_set()
