"""Routing, retry, ejection and health of one model's upstreams, over in-process engines.

The same behaviour against two real tritonservers (one SIGKILLed) is in tests/e2e/test_upstreams.py.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from prometheus_client import REGISTRY

from gateway.core.types import GenerateRequest, SamplingParams
from gateway.engine.contract import ModelContract
from gateway.engine.triton import upstream_message_error
from gateway.engine.upstreams import UpstreamGroup
from gateway.errors import Overloaded, UpstreamError, UpstreamInterrupted, UpstreamTimeout, UpstreamUnavailable
from tests.conftest import until
from tests.integration.fake_engine import FakeEngine

SCRIPT = [[1], [2], [3], [4]]


def request(i: int = 0) -> GenerateRequest:
    return GenerateRequest(f"req-{i}", [7, 8, 9], SamplingParams(max_tokens=16))


def engines(contract: ModelContract, n: int) -> list[FakeEngine]:
    return [FakeEngine(contract, SCRIPT, url=f"up-{i}:8001") for i in range(n)]


async def healthy_group(
    model: str, fakes: list[FakeEngine], eject_after: int = 3, interval: float = 60.0
) -> UpstreamGroup:
    group = UpstreamGroup(model, "synthetic", list(fakes), interval=interval, eject_after=eject_after)
    await group.check()
    assert all(u.available for u in group.upstreams)
    return group


async def drain(group: UpstreamGroup, i: int = 0) -> list[int]:
    return [t for tokens in [r async for r in group.generate(request(i), None, None)] for t in tokens.ids]


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_least_in_flight_wins_and_ties_rotate(contract: ModelContract) -> None:
    fakes = engines(contract, 3)
    group = await healthy_group("m-route", fakes)
    busy = group.upstreams[0]
    busy.begin()
    busy.begin()
    picks = [group.pick() for _ in range(6)]
    assert busy not in picks
    assert {p.url for p in picks if p is not None} == {"up-1:8001", "up-2:8001"}  # ties rotate
    busy.end()
    busy.end()
    assert await drain(group) == [1, 2, 3, 4]
    assert all(u.in_flight == 0 for u in group.upstreams)


async def test_unavailable_before_first_token_is_retried_once_elsewhere(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = await healthy_group("m-retry", fakes)
    fakes[0].unavailable = True
    for i in range(4):  # whichever it picks first, every request succeeds
        assert await drain(group, i) == [1, 2, 3, 4]
    assert len(fakes[1].requests) == 4
    retries = sample("gateway_upstream_retries_total", model="m-retry")
    assert retries == sample("gateway_upstream_failures_total", model="m-retry", upstream="up-0:8001") >= 1
    assert all(u.in_flight == 0 for u in group.upstreams)


async def test_a_call_broken_off_before_the_first_token_is_retried(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = await healthy_group("m-broken", fakes)
    fakes[0].fail_after = 0
    fakes[0].fail_with = UpstreamInterrupted  # gRPC INTERNAL: the server or its model process died mid-call
    for i in range(4):
        assert await drain(group, i) == [1, 2, 3, 4]
    assert len(fakes[0].requests) >= 1 and len(fakes[1].requests) == 4


async def test_a_full_queue_is_tried_elsewhere_but_not_held_against_the_server(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = await healthy_group("m-full", fakes, eject_after=1)
    fakes[0].fail_after = 0
    fakes[0].fail_with = Overloaded
    for i in range(4):
        assert await drain(group, i) == [1, 2, 3, 4]
    assert len(fakes[0].requests) >= 1
    assert all(u.available and u.failures == 0 for u in group.upstreams)


def test_tensorrt_llm_queue_full_is_overloaded() -> None:
    error = upstream_message_error("Maximum queue size of 64 has been reached, please try again later")
    assert isinstance(error, Overloaded) and error.kind.http_status == 503
    assert isinstance(upstream_message_error("model 'x' is not ready"), UpstreamUnavailable)
    assert type(upstream_message_error("input too long")) is UpstreamError


async def test_retried_only_once(contract: ModelContract) -> None:
    fakes = engines(contract, 3)
    group = await healthy_group("m-once", fakes)
    for f in fakes:
        f.unavailable = True
    with pytest.raises(UpstreamUnavailable):
        await drain(group)
    assert sorted(u.failures for u in group.upstreams) == [0, 1, 1]  # two tried, the third never


async def test_no_retry_after_the_first_token(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = await healthy_group("m-mid", fakes)
    for f in fakes:
        f.fail_after = 2
        f.fail_with = UpstreamUnavailable
    got: list[int] = []
    with pytest.raises(UpstreamUnavailable):
        async for tokens in group.generate(request(), None, None):
            got += tokens.ids
    assert got == [1, 2]
    assert sum(len(f.requests) for f in fakes) == 1
    assert sum(f.closed for f in fakes) == 1


async def test_model_errors_are_not_retried_nor_counted_against_the_server(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = await healthy_group("m-err", fakes, eject_after=1)
    for f in fakes:
        f.fail_after = 0
    with pytest.raises(UpstreamError):
        await drain(group)
    assert sum(len(f.requests) for f in fakes) == 1
    assert all(u.available and u.failures == 0 for u in group.upstreams)


async def test_repeated_failures_eject_until_a_later_check_passes(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = await healthy_group("m-eject", fakes, eject_after=2)
    bad, good = group.upstreams
    fakes[0].fail_after = 0
    fakes[0].fail_with = UpstreamTimeout  # fails, not retried, counted
    for i in range(6):
        with contextlib.suppress(UpstreamTimeout):
            await drain(group, i)
    assert bad.ejected_at is not None and not bad.available
    assert sample("gateway_upstream_ejections_total", model="m-eject", upstream=bad.url) == 1
    assert sample("gateway_upstream_healthy", model="m-eject", upstream=bad.url) == 0
    served_by_bad = len(fakes[0].requests)
    assert served_by_bad == 2  # ejected after the second failure: later requests went elsewhere
    # its health check still passes (the server answers), so a check begun after the ejection brings it back
    fakes[0].fail_after = None
    await group.check()
    assert bad.available and bad.failures == 0
    assert sample("gateway_upstream_healthy", model="m-eject", upstream=bad.url) == 1
    await asyncio.gather(*(drain(group, i) for i in range(4)))
    assert len(fakes[0].requests) > served_by_bad
    assert good.available


async def test_active_check_marks_down_and_up(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = await healthy_group("m-check", fakes)
    fakes[1].unavailable = True
    assert await group.ready()  # one healthy upstream is enough
    assert not group.upstreams[1].available
    assert all(group.pick() is group.upstreams[0] for _ in range(4))
    fakes[0].unavailable = True
    assert not await group.ready()
    fakes[1].unavailable = False
    assert await group.ready()
    assert group.upstreams[1].available


async def test_all_down_still_tries_every_upstream(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = UpstreamGroup("m-panic", "synthetic", list(fakes), interval=60.0)
    # no check has passed yet (startup, or a wrong verdict): requests are still sent
    assert not any(u.available for u in group.upstreams)
    assert await drain(group) == [1, 2, 3, 4]


async def test_contract_from_the_first_upstream_that_answers(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = await healthy_group("m-contract", fakes)
    fakes[0].unavailable = True
    assert await group.contract() == contract
    fakes[1].unavailable = True
    with pytest.raises(UpstreamUnavailable):
        await group.contract()


async def test_checker_runs_and_stops(contract: ModelContract) -> None:
    fakes = engines(contract, 2)
    group = UpstreamGroup("m-task", "synthetic", list(fakes), interval=0.05)
    group.start()
    await until(lambda: all(u.available for u in group.upstreams), 1.0, "the first check passed")
    fakes[0].unavailable = True
    await until(lambda: not group.upstreams[0].available, 1.0, "the failing upstream marked down")
    await group.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "health-m-task"]


class HeldInfer(FakeEngine):
    """A server whose unary calls wait until released, then answer (or fail)."""

    def __init__(self, contract: ModelContract, url: str) -> None:
        super().__init__(contract, SCRIPT, url=url)
        self.release = asyncio.Event()
        self.started = 0
        self.fail: Exception | None = None

    async def infer(self, model: str, request_id: str, inputs: object, outputs: object, timeout_s: float) -> dict:  # type: ignore[type-arg]
        self.started += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {"out": request_id}


async def test_a_cancelled_caller_leaves_its_call_running_in_its_slot(contract: ModelContract) -> None:
    """A client that goes away stops waiting; the Triton call runs to its end and keeps its admission slot
    until then, so work a client left behind still counts against max_in_flight."""
    from gateway.limits.admission import Admission

    fake = HeldInfer(contract, "up-0:8001")
    group = UpstreamGroup("m-unary", "minilm", [fake], generates=False)
    await group.check()
    admission = Admission("m-unary", 1, 0, 5.0)
    caller = asyncio.create_task(group.infer("r-1", {}, ("out",), 5.0, admission.slot()))
    await until(lambda: fake.started == 1, 5, "the call started")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert group.upstreams[0].in_flight == 1  # still running upstream...
    with pytest.raises(Overloaded):  # ...and still holding the only slot
        async with admission.slot():
            pass
    fake.release.set()
    await until(lambda: group.upstreams[0].in_flight == 0, 5, "the call ended")
    async with admission.slot():  # free again
        pass
    await group.close()


async def test_a_failed_call_nobody_waits_for_is_not_a_loose_exception(
    contract: ModelContract, caplog: pytest.LogCaptureFixture
) -> None:
    fake = HeldInfer(contract, "up-0:8001")
    fake.fail = UpstreamError("model error")
    group = UpstreamGroup("m-unary-2", "minilm", [fake], generates=False)
    await group.check()
    caller = asyncio.create_task(group.infer("r-2", {}, ("out",), 5.0))
    await until(lambda: fake.started == 1, 5, "the call started")
    caller.cancel()
    fake.release.set()
    await until(lambda: group.upstreams[0].in_flight == 0, 5, "the call ended")
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
    held = HeldInfer(contract, "up-1:8001")
    group_2 = UpstreamGroup("m-unary-3", "minilm", [held], generates=False)
    call = asyncio.create_task(group_2.infer("r-3", {}, ("out",), 5.0))
    await until(lambda: held.started == 1, 5, "the call started")
    await group_2.close()  # cancels what is left
    with pytest.raises(asyncio.CancelledError):
        await call
