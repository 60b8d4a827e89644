"""Requests multiplexed on a few shared ModelStreamInfer streams, as a stand-in Triton over real gRPC sees them.

Many concurrent requests travel on at most ``triton_streams`` streams, each answered by its own id;
a client that reuses its request id still gets its own answers; a stream the server breaks fails
only the requests on it, with an upstream error, and the next request opens a new one; letting go
(before an unload) half-closes the open streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.api.context import TRITON_POOL
from gateway.config import GatewayConfig, ModelConfig
from tests.conftest import WEIGHTS, until
from tests.integration.stalled_triton import StalledTriton
from tests.sse import finish_reasons, parse_sse

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
CHAT = {"model": "shared", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
async def triton() -> AsyncIterator[StalledTriton]:
    server = StalledTriton(stall_after=None, delay=0.01)
    await server.start()
    yield server
    await server.stop()


async def gateway(aiohttp_client: ClientFactory, server: StalledTriton, streams: int) -> TestClient:
    model = ModelConfig(id="shared", triton_url=server.address, triton_model="synthetic", tokenizer_dir=WEIGHTS)
    config = GatewayConfig(grpc_port=None, probe_interval=3600, triton_streams=streams, models=[model])
    return await aiohttp_client(create_app(config))


async def test_many_requests_share_a_few_streams_each_answered_by_its_id(
    aiohttp_client: ClientFactory, triton: StalledTriton
) -> None:
    client = await gateway(aiohttp_client, triton, 2)

    async def one(k: int) -> tuple[str, str]:
        resp = await client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 1 + k % 5, "stream": k % 2 == 0})
        assert resp.status == 200
        if k % 2 == 0:
            events = parse_sse(await resp.read())
            chunks = [e for e in events if isinstance(e, dict) and e.get("choices")]
            text = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks)
            return text, finish_reasons(events)[0]
        choice = (await resp.json())["choices"][0]
        return choice["message"]["content"], choice["finish_reason"]

    results = await asyncio.gather(*(one(k) for k in range(24)))
    assert [text for text, _ in results] == [" the" * (1 + k % 5) for k in range(24)]
    assert {reason for _, reason in results} == {"length"}
    assert len(triton.calls) == 24 and all(c.finished and not c.cancelled for c in triton.calls)
    assert triton.streams_opened <= 2
    assert triton.stops == []


async def test_a_request_id_in_flight_twice_gets_its_own_answers(
    aiohttp_client: ClientFactory, triton: StalledTriton
) -> None:
    client = await gateway(aiohttp_client, triton, 1)
    headers = {"x-request-id": "same-id"}
    sizes = (2, 6)
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=CHAT | {"max_tokens": n}, headers=headers) for n in sizes)
    )
    texts = [(await r.json())["choices"][0]["message"]["content"] for r in responses]
    assert texts == [" the" * n for n in sizes]  # the second went on a call of its own


async def test_a_broken_stream_fails_its_requests_and_the_next_opens_a_new_one(
    aiohttp_client: ClientFactory, triton: StalledTriton
) -> None:
    client = await gateway(aiohttp_client, triton, 1)
    running = asyncio.ensure_future(
        client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 2000, "stream": True})
    )
    await until(lambda: any(c.sent >= 2 for c in triton.calls), 30, "tokens generated")
    resp = await running
    address = triton.address
    await triton.stop()  # the server goes away under the stream
    body = await resp.read()
    assert b'"error"' in body and b"upstream" in body  # an in-band error event ends the stream
    assert b"[DONE]" not in body

    again = StalledTriton(stall_after=None, delay=0.01)
    await again.start(address)
    try:

        async def served() -> bool:
            r = await client.post("/v1/chat/completions", json=CHAT)
            return r.status == 200

        for _ in range(100):
            if await served():
                break
            await asyncio.sleep(0.1)
        assert await served()
        assert again.streams_opened >= 1 and all(c.finished for c in again.calls)
    finally:
        await again.stop()


async def test_letting_go_half_closes_the_open_streams_and_the_next_request_opens_a_new_one(
    aiohttp_client: ClientFactory, triton: StalledTriton
) -> None:
    client = await gateway(aiohttp_client, triton, 1)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert triton.streams_opened == 1
    client.app[TRITON_POOL].client(triton.address).let_go()  # as before an unload: Triton holds what streams carried
    await until(lambda: all(c.half_closed for c in triton.calls), 30, "the open stream half-closed")
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert triton.streams_opened == 2 and all(c.finished and not c.cancelled for c in triton.calls)
