"""How the gateway ends each Triton call, as a stand-in Triton over real gRPC records it.

Cancelling a call while Triton still sends on it is a race that crashes older tritonservers, so:
a request that ends by itself is read to its end, never cancelled nor stopped; one the gateway must
end early (a stop string inside a token, a client that went away) is stopped in-band with
TensorRT-LLM's ``stop`` request; only a model without a ``stop`` input is cancelled. Each holds for
both transports: a call per request (``triton_streams = 0``: half-closed, read to its end) and
requests on shared streams (the default).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from tests.conftest import WEIGHTS, until
from tests.integration.stalled_triton import Call, StalledTriton
from tests.sse import finish_reasons, parse_sse

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}


async def serve(server: StalledTriton) -> AsyncIterator[StalledTriton]:
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def triton() -> AsyncIterator[StalledTriton]:
    async for server in serve(StalledTriton(stall_after=None, delay=0.005)):
        yield server


@pytest.fixture(params=[0, 4], ids=["call-per-request", "shared-streams"])
def streams(request: pytest.FixtureRequest) -> int:
    return int(request.param)


async def gateway(aiohttp_client: ClientFactory, server: StalledTriton, streams: int) -> TestClient:
    model = ModelConfig(id="scripted", triton_url=server.address, triton_model="synthetic", tokenizer_dir=WEIGHTS)
    config = GatewayConfig(grpc_port=None, probe_interval=3600, triton_streams=streams, models=[model])
    return await aiohttp_client(create_app(config))


def generation_calls(server: StalledTriton) -> list[Call]:
    return [c for c in server.calls if not c.request_id.startswith("health-probe")]


async def ended_cleanly(calls: list[Call], streams: int) -> None:
    await until(lambda: all(c.finished for c in calls), 30, "every request ended by the model")
    if not streams:
        await until(lambda: all(c.half_closed for c in calls), 30, "every call half-closed by the gateway")
    assert not any(c.cancelled for c in calls)


async def test_requests_that_end_by_themselves_are_never_cancelled_nor_stopped(
    aiohttp_client: ClientFactory, triton: StalledTriton, streams: int
) -> None:
    client = await gateway(aiohttp_client, triton, streams)
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 3, "n": 2, "stream": stream})
        assert resp.status == 200
        if stream:
            assert finish_reasons(parse_sse(await resp.read())) == {0: "length", 1: "length"}
        else:
            assert [c["finish_reason"] for c in (await resp.json())["choices"]] == ["length", "length"]
    calls = generation_calls(triton)
    assert len(calls) == 4 and all(c.sent == 3 for c in calls)
    await ended_cleanly(calls, streams)
    assert triton.stops == []


async def test_a_stop_sequence_the_model_ends_on_needs_no_stop_request(
    aiohttp_client: ClientFactory, triton: StalledTriton, streams: int
) -> None:
    client = await gateway(aiohttp_client, triton, streams)
    resp = await client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 50, "stop": ["the"]})
    choice = (await resp.json())["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (" ", "stop")
    calls = generation_calls(triton)
    assert [c.sent for c in calls] == [1]  # " the" is a stop sequence sent to the model: it ended there
    await ended_cleanly(calls, streams)
    assert triton.stops == []


async def test_a_stop_string_inside_a_token_stops_the_model_in_band(
    aiohttp_client: ClientFactory, triton: StalledTriton, streams: int
) -> None:
    client = await gateway(aiohttp_client, triton, streams)
    resp = await client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 2000, "stop": ["th"]})
    choice = (await resp.json())["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (" ", "stop")
    (call,) = generation_calls(triton)
    await until(lambda: triton.stops == [call.request_id], 30, "a stop request for the call")
    await ended_cleanly([call], streams)
    assert call.sent < 2000


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_a_client_that_goes_away_stops_the_model_in_band(
    aiohttp_client: ClientFactory, triton: StalledTriton, stream: bool, streams: int
) -> None:
    client = await gateway(aiohttp_client, triton, streams)
    body = CHAT | {"max_tokens": 2000, "stream": stream}
    request = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
    await until(lambda: any(c.sent >= 3 for c in generation_calls(triton)), 30, "tokens generated")
    if stream:
        (await request).close()  # hang up mid-generation
    else:
        request.cancel()  # hang up while waiting for the whole answer
    (call,) = generation_calls(triton)
    await until(lambda: triton.stops == [call.request_id], 30, "a stop request for the call")
    await ended_cleanly([call], streams)
    assert call.sent < 2000


@pytest.fixture
async def unstoppable() -> AsyncIterator[StalledTriton]:
    async for server in serve(StalledTriton(stall_after=None, delay=0.005, stoppable=False)):
        yield server


async def test_a_model_without_a_stop_input_can_only_be_cancelled(
    aiohttp_client: ClientFactory, unstoppable: StalledTriton, streams: int
) -> None:
    client = await gateway(aiohttp_client, unstoppable, streams)
    resp = await client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 2000, "stream": True})
    await until(lambda: any(c.sent >= 3 for c in generation_calls(unstoppable)), 30, "tokens generated")
    resp.close()
    (call,) = generation_calls(unstoppable)
    await until(lambda: call.cancelled, 30, "the call cancelled")
    assert unstoppable.stops == []
