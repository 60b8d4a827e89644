"""A Triton that accepts a stream and never answers: every wait on it is bounded.

The gateway talks real gRPC to a stand-in server (tests/integration/stalled_triton.py) that says it
is ready and then sends nothing: the request ends at its deadline with ``upstream_timeout``, the
server is ejected, and /ready turns 503 once a probe generation times out. The silent request is
cancelled when it had a call of its own (``triton_streams = 0``), and stopped in-band when it was on
a shared stream (which is never cancelled under other requests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from tests.conftest import WEIGHTS, until
from tests.integration.stalled_triton import StalledTriton

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
CHAT = {"model": "stalled", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(params=[0, 4], ids=["call-per-request", "shared-streams"])
def streams(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def ended_upstream(server: StalledTriton, streams: int) -> bool:
    """The silent request was ended on the server: its call cancelled, or a stop request sent."""
    if streams:
        return bool(server.stops) and server.cancelled == 0
    return server.cancelled >= 1


@pytest.fixture
async def stalled() -> AsyncIterator[StalledTriton]:
    server = StalledTriton()
    await server.start()
    yield server
    await server.stop()


async def gateway(aiohttp_client: ClientFactory, server: StalledTriton, model_id: str, streams: int) -> TestClient:
    config = GatewayConfig(
        grpc_port=None,
        triton_streams=streams,
        health_check_interval=0.2,
        eject_after_failures=1,
        probe_interval=0.2,
        probe_timeout=0.5,
        models=[
            ModelConfig(
                id=model_id,
                triton_url=server.address,
                triton_model="synthetic",
                tokenizer_dir=WEIGHTS,
                first_token_timeout=0.5,
                idle_timeout=0.5,
            )
        ],
    )
    return await aiohttp_client(create_app(config))


async def test_a_silent_upstream_times_out_is_ended_and_ejected(
    aiohttp_client: ClientFactory, stalled: StalledTriton, streams: int
) -> None:
    client = await gateway(aiohttp_client, stalled, f"stalled-{streams}", streams)
    resp = await client.post("/v1/chat/completions", json=CHAT | {"model": f"stalled-{streams}"})
    assert resp.status == 504
    error = (await resp.json())["error"]
    assert error["code"] == "upstream_timeout" and error["type"] == "timeout"
    await until(lambda: ended_upstream(stalled, streams), 30, "the request ended on the server")
    ejections = REGISTRY.get_sample_value(
        "gateway_upstream_ejections_total", {"model": f"stalled-{streams}", "upstream": stalled.address}
    )
    assert ejections == 1

    streamed = await client.post("/v1/chat/completions", json=CHAT | {"stream": True, "model": f"stalled-{streams}"})
    assert streamed.status == 504  # nothing was sent yet: a real status, not an in-band event


async def test_ready_turns_503_when_probe_generations_get_no_answer(
    aiohttp_client: ClientFactory, stalled: StalledTriton, streams: int
) -> None:
    client = await gateway(aiohttp_client, stalled, f"stalled-ready-{streams}", streams)
    states: list[int] = []

    async def probe() -> None:
        resp = await client.get("/ready")
        states.append(resp.status)

    # ServerReady and ModelReady say yes; only the probe generation finds the server silent
    for _ in range(200):
        await probe()
        if states[-1] == 503:
            break
    assert states[-1] == 503, states
    assert len(stalled.calls) >= 1
    await until(lambda: ended_upstream(stalled, streams), 30, "the probe's request ended at its timeout")


async def test_a_stream_that_goes_silent_ends_with_an_in_band_timeout(
    aiohttp_client: ClientFactory, streams: int
) -> None:
    server = StalledTriton(stall_after=2)
    await server.start()
    try:
        model = f"stalled-mid-{streams}"
        client = await gateway(aiohttp_client, server, model, streams)
        resp = await client.post("/v1/chat/completions", json=CHAT | {"model": model, "stream": True})
        assert resp.status == 200
        events = [line[6:] for line in (await resp.read()).split(b"\n") if line.startswith(b"data: ")]
        payloads = [orjson.loads(e) for e in events if e != b"[DONE]"]
        assert payloads[-1]["error"]["code"] == "upstream_timeout"
        text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads[:-1] if p.get("choices"))
        assert text == " the the"  # what came before the silence reached the client
        await until(lambda: ended_upstream(server, streams), 30, "the request ended on the server")
    finally:
        await server.stop()
