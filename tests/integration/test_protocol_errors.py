"""HTTP that aiohttp rejects at the protocol level gets OpenAI's JSON error, over raw sockets."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from gateway.api.app import create_app
from gateway.api.protocol_errors import GatewayRunner
from gateway.config import GatewayConfig, ModelConfig
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL
from tests.integration.fake_engine import FakeEngine
from tests.integration.raw_http import exchange

HOST = b"Host: gateway\r\n"
TLS_CLIENT_HELLO = bytes.fromhex("160301 00f8 01 0000f4 0303") + bytes(range(32)) + b"\x00" * 40

MALFORMED: dict[str, bytes] = {
    "content_length_not_a_number": b"POST /v1/completions HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n",
    "content_lengths_in_conflict": b"POST /v1/completions HTTP/1.1\r\n"
    + HOST
    + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "content_length_and_chunked": b"POST /v1/completions HTTP/1.1\r\n"
    + HOST
    + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "unknown_transfer_encoding": b"POST /v1/completions HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
    "bad_chunk_size": b"POST /v1/completions HTTP/1.1\r\n"
    + HOST
    + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "cr_in_header": b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A: b\rc\r\n\r\n",
    "lf_in_header": b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A: b\nc\r\n\r\n",
    "nul_in_header": b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A: b\x00c\r\n\r\n",
    "space_in_header_name": b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X A: b\r\n\r\n",
    "oversize_url": b"GET /v1/" + b"a" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
    "oversize_header": b"GET /v1/models HTTP/1.1\r\n" + HOST + b"X-A: " + b"a" * 9000 + b"\r\n\r\n",
    "too_many_headers": b"GET /v1/models HTTP/1.1\r\n"
    + HOST
    + b"".join(b"X-%d: a\r\n" % i for i in range(200))
    + b"\r\n",
    "unknown_method": b"FROB /v1/models HTTP/1.1\r\n" + HOST + b"\r\n",
    "invalid_method": b"FR@B /v1/models HTTP/1.1\r\n" + HOST + b"\r\n",
    "bad_http_version": b"GET /v1/models HTTP/9.9\r\n" + HOST + b"\r\n",
    "tls_client_hello": TLS_CLIENT_HELLO,
}


class GatewayTestServer(TestServer):
    """The in-process server, run by the gateway's runner as ``gateway.api.run`` runs it."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
async def gateway(aiohttp_client: Callable[..., Awaitable[TestClient]], engine: FakeEngine) -> TestClient:
    model = ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS)
    config = GatewayConfig(grpc_port=None, models=[model])
    return await aiohttp_client(GatewayTestServer(create_app(config, lambda url: engine)))


async def malformed_count(client: TestClient) -> float:
    text = await (await client.get("/metrics")).text()
    line = next(
        (x for x in text.splitlines() if x.startswith("gateway_requests_total{") and 'route="malformed"' in x), ""
    )
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_http_gets_an_openai_error(gateway: TestClient, raw: bytes) -> None:
    before = await malformed_count(gateway)
    assert gateway.host and gateway.port
    resp = await exchange(gateway.host, gateway.port, raw)
    assert resp.status == 400
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "malformed_request"
    assert error["param"] is None
    assert error["message"].startswith("Malformed HTTP request: ")
    assert "\n" not in error["message"] and "b'" not in error["message"]  # no echo of the raw bytes
    assert await malformed_count(gateway) == before + 1


async def test_the_runner_serves_the_app_as_usual(gateway: TestClient) -> None:
    resp = await gateway.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert resp.status == 200 and (await resp.json())["usage"]["completion_tokens"] == 2
    resp = await gateway.get("/v1/nothing")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_an_unreadable_body_is_400_and_logged_as_no_error(
    gateway: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        resp = await gateway.post(
            "/v1/completions",
            data=b"not gzip at all",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "malformed_request"
        resp = await gateway.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
        assert resp.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
