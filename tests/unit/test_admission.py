"""Per-upstream admission: a cap in flight, a bounded queue, refusal without waiting past it."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import Overloaded
from gateway.limits.admission import Admission


async def test_cap_queue_and_refusal() -> None:
    admission = Admission("m", max_in_flight=1, max_queue=1, queue_timeout=5)
    release = asyncio.Event()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with admission.slot():
            order.append(name)
            await release.wait()

    first = asyncio.create_task(hold("first"))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("second"))  # waits in the queue
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as err:  # the queue is full: refused at once
        async with admission.slot():
            pass
    assert err.value.kind.http_status == 503 and err.value.retry_after
    assert order == ["first"]
    release.set()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]


async def test_queue_timeout() -> None:
    admission = Admission("m", max_in_flight=1, max_queue=4, queue_timeout=0.05)
    async with admission.slot():
        with pytest.raises(Overloaded, match="stayed at capacity"):
            async with admission.slot():
                pass


async def test_no_cap() -> None:
    admission = Admission("m", max_in_flight=None, max_queue=0, queue_timeout=1)
    async with admission.slot(), admission.slot():
        pass
