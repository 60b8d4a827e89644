"""GET /version: the gateway's version, each Triton server's (asked over real gRPC, briefly cached) and
the models served; a server that is down or silent is reported as such, and the answer is still 200."""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.api.app import create_app
from gateway.api.version import gateway_version
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, ModelConfig, ProjectConfig
from perf.stack import free_port
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL
from tests.integration.fake_engine import FakeEngine

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]


class MetadataOnly(service_pb2_grpc.GRPCInferenceServiceServicer):
    """A Triton that answers ServerMetadata (after ``delay`` seconds, counting the calls) and not ready."""

    def __init__(self, version: str, delay: float = 0.0) -> None:
        self.version = version
        self.delay = delay
        self.calls = 0
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ServerMetadataResponse:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return service_pb2.ServerMetadataResponse(
            name="triton", version=self.version, extensions=["classification", "sequence"]
        )

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=False)  # the gateway's health checks: no model here

    async def start(self) -> str:
        self._server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        self.address = f"127.0.0.1:{free_port()}"
        self._server.add_insecure_port(self.address)
        await self._server.start()
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)


@pytest.fixture
async def servers() -> AsyncIterator[tuple[MetadataOnly, MetadataOnly]]:
    live, hung = MetadataOnly("2.59.0"), MetadataOnly("9.9.9", delay=30.0)
    await live.start()
    await hung.start()
    yield live, hung
    await hung.stop()
    await live.stop()


def model(model_id: str, *urls: str) -> ModelConfig:
    return ModelConfig(id=model_id, triton_urls=list(urls), triton_model="smollm2", tokenizer_dir=WEIGHTS)


async def test_version_with_a_fake_engine(client: TestClient) -> None:
    for path in ("/version", "/v1/version"):
        resp = await client.get(path)
        assert resp.status == 200
        body = await resp.json()
        assert body["name"] == "triton-openai-gateway"
        assert body["version"] == importlib.metadata.version("triton-openai-gateway") == gateway_version()
        assert body["upstreams"] == [
            {
                "url": "fake:0",
                "status": "ok",
                "name": "triton",
                "version": "2.0.0-fake",
                "extensions": ["classification", "sequence", "statistics"],
            }
        ]
        assert body["models"] == [{"id": MODEL, "task": "chat", "upstreams": ["fake:0"]}]


async def test_an_unavailable_engine_is_reported_not_a_500(client: TestClient, engine: FakeEngine) -> None:
    engine.unavailable = True
    resp = await client.get("/version")
    assert resp.status == 200
    (upstream,) = (await resp.json())["upstreams"]
    assert upstream["url"] == "fake:0" and upstream["status"] == "unreachable" and "unavailable" in upstream["error"]


async def test_real_triton_servers_up_down_and_silent(
    aiohttp_client: ClientFactory, servers: tuple[MetadataOnly, MetadataOnly]
) -> None:
    live, hung = servers
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = GatewayConfig(
        grpc_port=None,
        triton_timeout=0.5,  # a silent server is given this long
        models=[model(MODEL, live.address, down), model("other", hung.address, live.address)],
    )
    client = await aiohttp_client(create_app(config))
    begun = time.monotonic()
    resp = await client.get("/version")
    assert resp.status == 200 and time.monotonic() - begun < 3  # the silent server: 0.5 s
    body = await resp.json()
    by_url = {u["url"]: u for u in body["upstreams"]}
    assert list(by_url) == [live.address, down, hung.address]  # each server once
    assert by_url[live.address] == {
        "url": live.address,
        "status": "ok",
        "name": "triton",
        "version": "2.59.0",
        "extensions": ["classification", "sequence"],
    }
    assert by_url[down]["status"] == "unreachable" and by_url[down]["error"]
    assert by_url[hung.address]["status"] == "unreachable" and "in time" in by_url[hung.address]["error"]
    assert body["models"] == [
        {"id": MODEL, "task": "chat", "upstreams": [live.address, down]},
        {"id": "other", "task": "chat", "upstreams": [hung.address, live.address]},
    ]
    assert live.calls == 1


async def test_answers_are_cached_and_shared(aiohttp_client: ClientFactory, servers: tuple[MetadataOnly, Any]) -> None:
    live, _ = servers
    live.delay = 0.2
    config = GatewayConfig(grpc_port=None, models=[model(MODEL, live.address)])
    client = await aiohttp_client(create_app(config))
    answers = await asyncio.gather(*(client.get("/version") for _ in range(5)))
    assert [r.status for r in answers] == [200] * 5
    assert (await client.get("/version")).status == 200
    assert live.calls == 1  # five at once share one call; the next one reads the cache


async def test_needs_a_key_and_lists_only_what_it_may_use(aiohttp_client: ClientFactory, engine: FakeEngine) -> None:
    key, record = new_key("team", "narrow")
    config = GatewayConfig(
        grpc_port=None,
        models=[model(MODEL, "a:1"), model("other", "b:2")],
        projects=[ProjectConfig(id="team", models=["other"])],
        keys=[record],
    )
    client = await aiohttp_client(create_app(config, lambda url: FakeEngine(engine._contract, [], url=url)))
    assert (await client.get("/version")).status == 401
    resp = await client.get("/version", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    body = await resp.json()
    assert [m["id"] for m in body["models"]] == ["other"]
    assert [u["url"] for u in body["upstreams"]] == ["b:2"]  # not the servers of a model it cannot use
