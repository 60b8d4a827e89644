"""Limits over REST and gRPC: headers, 429 with Retry-After, RESOURCE_EXHAUSTED with RetryInfo."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.api.app import create_app
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, LimitsConfig, ModelConfig, ProjectConfig
from gateway.grpcapi.stubs import pb, pb_grpc
from perf.stack import free_port
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL
from tests.integration.fake_engine import FakeEngine

KEY, RECORD = new_key("team", "limited")
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def limited(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine
) -> AsyncIterator[tuple[TestClient, int]]:
    port = free_port()
    key = RECORD.model_copy(update={"limits": LimitsConfig(requests_per_minute=3, tokens_per_minute=200)})
    config = GatewayConfig(
        grpc_port=port,
        models=[ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_output_tokens=64)],
        projects=[ProjectConfig(id="team", limits=LimitsConfig(max_concurrent=1))],
        keys=[key],
    )
    yield await aiohttp_client(create_app(config, lambda url: engine)), port


async def test_rest_headers_settle_and_429(limited: tuple[TestClient, int]) -> None:
    client, _ = limited
    first = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-limit-tokens"] == "200"
    reserved_left = int(first.headers["x-ratelimit-remaining-tokens"])  # 200 - (prompt + 10)
    used = (await first.json())["usage"]["total_tokens"]
    second = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    # settled: the first request's unused reservation came back before the second reserved
    left = int(second.headers["x-ratelimit-remaining-tokens"])
    assert left == pytest.approx(200 - used - (200 - reserved_left), abs=2)
    await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    error = (await refused.json())["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_exceeded"


async def test_concurrency_limit_and_release(limited: tuple[TestClient, int], engine: FakeEngine) -> None:
    client, _ = limited
    engine.delay = 0.05
    stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
    assert stream.status == 200
    busy = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert busy.status == 429 and "concurrent" in (await busy.json())["error"]["message"]
    await stream.read()  # the stream ends and frees its slot
    engine.delay = 0
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status == 200


async def test_grpc_resource_exhausted(limited: tuple[TestClient, int]) -> None:
    _, port = limited
    request = pb.ChatCompletionRequest(
        model=MODEL, messages=[pb.ChatMessage(role="user", content="Hi")], sampling=pb.SamplingParams(max_tokens=10)
    )
    metadata = (("authorization", f"Bearer {KEY}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        for _ in range(3):
            await stub.ChatCompletion(request, metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ChatCompletion(request, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err.value)
    assert status is not None
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.seconds >= 1


async def test_two_gateways_share_limits_through_redis(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine, redis_url: str
) -> None:
    key = RECORD.model_copy(update={"limits": LimitsConfig(requests_per_minute=3)})
    config = GatewayConfig(
        grpc_port=None,
        limits_redis_url=redis_url,
        models=[ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_output_tokens=64)],
        projects=[ProjectConfig(id="team")],
        keys=[key],
    )
    # two gateway apps (as on two machines) over one real redis-server
    gateways = [await aiohttp_client(create_app(config, lambda url: engine)) for _ in range(2)]
    statuses = [(await gateways[i % 2].post("/v1/chat/completions", json=CHAT, headers=AUTH)).status for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
