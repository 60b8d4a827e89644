"""access_log_probes: /health, /ready and /metrics are in the access log by default; turned off, those
scrapes are left out while every other request (and the request metrics of all) still counts."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL
from tests.integration.fake_engine import FakeEngine

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
PROBES = ("/health", "/ready", "/metrics")


async def logged_paths(client: TestClient, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        for path in (*PROBES, "/v1/models", "/version"):
            assert (await client.get(path)).status == 200, path
    return [r.getMessage().split('"path":"')[1].split('"')[0] for r in caplog.records if r.name == "gateway.access"]


@pytest.mark.parametrize("probes", [True, False])
async def test_probes_in_the_access_log(
    aiohttp_client: ClientFactory, engine: FakeEngine, caplog: pytest.LogCaptureFixture, probes: bool
) -> None:
    config = GatewayConfig(
        grpc_port=None,
        access_log_probes=probes,
        models=[ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS)],
    )
    client = await aiohttp_client(create_app(config, lambda url: engine))
    expected = [*PROBES, "/v1/models", "/version"] if probes else ["/v1/models", "/version"]
    assert await logged_paths(client, caplog) == expected
    if not probes:  # still counted in the metrics
        text = await (await client.get("/metrics")).text()
        assert 'route="/health"' in text and 'route="/ready"' in text
