"""The operator API when its deployment store (Redis) cannot be reached: the gateway starts and serves
its configured models, and the operator API answers 503 store_unavailable instead of failing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from perf.stack import free_port
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL
from tests.integration.fake_engine import FakeEngine


async def test_an_unreachable_store_is_a_503_and_the_models_still_serve(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine
) -> None:
    config = GatewayConfig(
        grpc_port=None,
        models=[ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS)],
        deployments_redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    )
    client = await aiohttp_client(create_app(config, lambda url: engine))
    resp = await client.get("/admin/v1/deployments")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "store_unavailable"
    resp = await client.post("/admin/v1/deployments", json={"name": "d", "model": "smollm2"})
    assert resp.status == 503
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert (await client.post("/v1/chat/completions", json=chat)).status == 200
