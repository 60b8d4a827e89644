"""Admission's batch class: a batch line starts only while no interactive request waits and fewer than
the high-water mark are in flight; a waiting interactive request always goes first."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.types import RequestStats
from gateway.errors import Overloaded
from gateway.limits.admission import DEFAULT_BATCH_HIGH_WATER, Admission, batch_high_water


def batch() -> RequestStats:
    return RequestStats(0.0, batch=True)


def test_high_water_defaults() -> None:
    assert batch_high_water(None) == DEFAULT_BATCH_HIGH_WATER
    assert [batch_high_water(cap) for cap in (1, 2, 4, 8, 100)] == [1, 1, 3, 6, 75]
    assert batch_high_water(8, 2) == 2 and batch_high_water(8, 20) == 8 and batch_high_water(None, 9) == 9


class Holder:
    """Takes a slot in a task and keeps it until released."""

    def __init__(self, admission: Admission, stats: RequestStats | None, log: list[str], name: str) -> None:
        self.release = asyncio.Event()
        self.task = asyncio.create_task(self._hold(admission, stats, log, name))

    async def _hold(self, admission: Admission, stats: RequestStats | None, log: list[str], name: str) -> None:
        async with admission.slot(stats):
            log.append(name)
            await self.release.wait()

    async def done(self) -> None:
        self.release.set()
        await self.task


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_batch_stops_at_the_high_water_mark() -> None:
    admission = Admission("m", max_in_flight=4, max_queue=4, queue_timeout=5)  # high water 3
    log: list[str] = []
    lines = [Holder(admission, batch(), log, f"b{i}") for i in range(5)]
    await settle()
    assert log == ["b0", "b1", "b2"] and admission.in_flight == 3
    first = Holder(admission, None, log, "i0")  # the slot kept for interactive requests
    await settle()
    assert log[-1] == "i0" and admission.in_flight == 4
    await lines[0].done()
    await settle()
    assert log[-1] == "i0"  # 4 in flight less one: 3, at the mark
    await first.done()
    await settle()
    assert log[-1] == "b3"
    for line in lines[1:]:
        await line.done()
    assert log[-1] == "b4"


async def test_interactive_never_waits_behind_batch() -> None:
    admission = Admission("m", max_in_flight=2, max_queue=4, queue_timeout=5)  # high water 1
    log: list[str] = []
    running = Holder(admission, batch(), log, "b0")
    other = Holder(admission, None, log, "i0")
    await settle()
    assert log == ["b0", "i0"]
    waiting_batch = Holder(admission, batch(), log, "b1")
    waiting_interactive = Holder(admission, None, log, "i1")  # at capacity: waits
    await settle()
    assert log == ["b0", "i0"]
    await running.done()  # a slot frees: the interactive request takes it, not the older batch line
    await settle()
    assert log == ["b0", "i0", "i1"]
    await other.done()
    await settle()
    assert log == ["b0", "i0", "i1"]  # i1 alone in flight: 1, the batch line's mark
    await waiting_interactive.done()
    await settle()
    assert log[-1] == "b1"
    await waiting_batch.done()


async def test_a_waiting_interactive_request_holds_batch_back() -> None:
    admission = Admission("m", max_in_flight=4, max_queue=4, queue_timeout=5, batch_high_water_mark=4)
    log: list[str] = []
    holders = [Holder(admission, None, log, f"i{i}") for i in range(4)]
    waiter = Holder(admission, None, log, "waiter")
    line = Holder(admission, batch(), log, "b")
    await settle()
    await holders[0].done()  # one slot: the waiting interactive request's
    await settle()
    assert log[-1] == "waiter" and admission.in_flight == 4
    await holders[1].done()
    await settle()
    assert log[-1] == "b"
    for h in (*holders[2:], waiter, line):
        await h.done()


async def test_batch_resumes_when_the_last_interactive_waiter_gives_up() -> None:
    admission = Admission("m", max_in_flight=1, max_queue=1, queue_timeout=0.1)
    log: list[str] = []
    holder = Holder(admission, None, log, "i0")
    await settle()
    with pytest.raises(Overloaded):
        async with admission.slot():
            pass
    line = Holder(admission, batch(), log, "b")
    await holder.done()
    await line.done()
    assert log == ["i0", "b"]


async def test_uncapped_model_counts_interactive_for_the_mark() -> None:
    admission = Admission("m", max_in_flight=None, max_queue=0, queue_timeout=1, batch_high_water_mark=2)
    log: list[str] = []
    interactive = [Holder(admission, None, log, f"i{i}") for i in range(3)]  # never wait
    line = Holder(admission, batch(), log, "b")
    await settle()
    assert log == ["i0", "i1", "i2"] and admission.in_flight == 3
    await interactive[0].done()
    await interactive[1].done()
    await settle()
    assert log[-1] == "b"
    await interactive[2].done()
    await line.done()
    assert admission.in_flight == 0


async def test_a_cancelled_batch_waiter_passes_its_turn_on() -> None:
    admission = Admission("m", max_in_flight=2, max_queue=0, queue_timeout=1)  # high water 1
    log: list[str] = []
    running = Holder(admission, batch(), log, "b0")
    gone = Holder(admission, batch(), log, "gone")
    nxt = Holder(admission, batch(), log, "b1")
    await settle()
    running.release.set()
    gone.task.cancel()  # woken or not, it leaves: b1 must still get its turn
    await settle()
    await asyncio.gather(running.task, gone.task, return_exceptions=True)
    await settle()
    assert log == ["b0", "b1"]
    await nxt.done()
    assert admission.in_flight == 0


async def test_batch_wait_is_recorded() -> None:
    admission = Admission("m", max_in_flight=1, max_queue=0, queue_timeout=1)
    stats = batch()
    log: list[str] = []
    holder = Holder(admission, None, log, "i")
    await settle()
    task = asyncio.create_task(admission.slot(stats).__aenter__())
    await asyncio.sleep(0.05)
    await holder.done()
    await task
    assert stats.queue_wait >= 0.04
