"""CORS: off by default (no CORS headers at all); with cors_origins, preflights are answered without a
key, real responses (JSON, SSE, errors) carry the headers for an allowed origin, and nothing ever
allows credentials."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from gateway.api.app import create_app
from gateway.auth.keys import new_key
from gateway.config import ConfigError, GatewayConfig, ModelConfig, ProjectConfig, load_config
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL, REPLY
from tests.integration.fake_engine import FakeEngine
from tests.sse import chat_text, parse_sse

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
ALLOWED = "https://app.example.com"
OTHER = "https://evil.example.net"
KEY, RECORD = new_key("team-a", "browser")
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


def preflight(origin: str, method: str = "POST", headers: str = "") -> dict[str, str]:
    asked = {"Origin": origin, "Access-Control-Request-Method": method}
    return asked | ({"Access-Control-Request-Headers": headers} if headers else {})


def cors_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("access-control-")}


async def gateway(aiohttp_client: ClientFactory, engine: FakeEngine, origins: list[str]) -> TestClient:
    config = GatewayConfig(
        grpc_port=None,
        cors_origins=origins,
        models=[ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_output_tokens=256)],
        projects=[ProjectConfig(id="team-a", limits={"requests_per_minute": 1000})],
        keys=[RECORD],
    )
    return await aiohttp_client(create_app(config, lambda url: engine))


@pytest.fixture
async def cors(aiohttp_client: ClientFactory, engine: FakeEngine) -> TestClient:
    return await gateway(aiohttp_client, engine, [ALLOWED, "http://localhost:3000/"])


async def test_off_by_default_no_cors_headers_at_all(client: TestClient) -> None:
    resp = await client.options("/v1/chat/completions", headers=preflight(ALLOWED))
    assert resp.status == 405 and not cors_headers(resp.headers)  # as before: no preflight support
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ALLOWED})
    assert resp.status == 200 and not cors_headers(resp.headers) and "Vary" not in resp.headers


async def test_preflight_from_an_allowed_origin_needs_no_key(cors: TestClient) -> None:
    asked = "authorization, content-type, x-request-id, openai-organization, x-stainless-os"
    for path in ("/v1/chat/completions", "/team-a/v1/chat/completions", "/v1/embeddings", "/tokenize"):
        resp = await cors.options(path, headers=preflight(ALLOWED, headers=asked))
        assert resp.status == 204, path
        assert cors_headers(resp.headers) == {
            "access-control-allow-origin": ALLOWED,
            "access-control-allow-methods": "POST",
            "access-control-allow-headers": asked,  # echoed
            "access-control-max-age": "600",
        }
        assert "Origin" in resp.headers["Vary"] and "x-request-id" in resp.headers
    resp = await cors.options("/v1/models", headers=preflight("http://localhost:3000", "GET"))
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"  # configured with a "/"
    # no headers asked for: the ones OpenAI's clients send
    resp = await cors.options("/v1/completions", headers=preflight(ALLOWED))
    allow = resp.headers["Access-Control-Allow-Headers"]
    assert all(h in allow for h in ("Authorization", "Content-Type", "X-Request-ID", "OpenAI-Organization"))


async def test_preflight_from_another_origin_is_refused_without_cors_headers(cors: TestClient) -> None:
    resp = await cors.options("/v1/chat/completions", headers=preflight(OTHER))
    assert resp.status == 403 and not cors_headers(resp.headers)
    assert (await resp.json())["error"]["code"] == "permission_denied"


async def test_what_is_not_a_preflight_is_not_answered_as_one(cors: TestClient) -> None:
    resp = await cors.options("/v1/nope", headers=preflight(ALLOWED))  # no such route
    assert resp.status != 204 and "Access-Control-Allow-Methods" not in resp.headers
    resp = await cors.options("/v1/chat/completions", headers={"Origin": ALLOWED})  # no method asked
    assert resp.status == 401  # a plain OPTIONS needs a key like anything else
    resp = await cors.options("/v1/chat/completions", headers={"Origin": ALLOWED, **AUTH})
    assert resp.status == 405


async def test_real_requests_carry_the_headers(cors: TestClient) -> None:
    origin = {"Origin": ALLOWED}
    resp = await cors.post("/v1/chat/completions", json=CHAT, headers=origin)
    assert resp.status == 401  # the real request still needs its key
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED and "x-request-id" in resp.headers
    resp = await cors.post("/v1/chat/completions", json=CHAT, headers=origin | AUTH)
    assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == REPLY
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "x-gateway-overhead-ms", "x-ratelimit-remaining-requests", "retry-after"} <= exposed
    assert "x-ratelimit-remaining-requests" in resp.headers and "Origin" in resp.headers["Vary"]
    # a stream: its headers went out before the handler returned
    resp = await cors.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=origin | AUTH)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED and "Access-Control-Expose-Headers" in resp.headers
    assert chat_text(parse_sse(await resp.read())) == REPLY
    # errors
    resp = await cors.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=origin | AUTH)
    assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    resp = await cors.get("/v1/nope", headers=origin | AUTH)
    assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == ALLOWED
    resp = await cors.get("/health", headers=origin)
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_other_origins_and_no_origin_get_no_cors_headers_but_vary(cors: TestClient) -> None:
    for headers in ({"Origin": OTHER}, {}):
        resp = await cors.post("/v1/chat/completions", json=CHAT, headers=headers | AUTH)
        assert resp.status == 200  # served; the browser keeps the page from reading it
        assert not cors_headers(resp.headers) and resp.headers["Vary"] == "Origin"


async def test_any_origin(aiohttp_client: ClientFactory, engine: FakeEngine) -> None:
    client = await gateway(aiohttp_client, engine, ["*"])
    resp = await client.options("/v1/chat/completions", headers=preflight(OTHER))
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": OTHER} | AUTH)
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_never_credentials(cors: TestClient) -> None:
    responses = [
        await cors.options("/v1/chat/completions", headers=preflight(ALLOWED)),
        await cors.post("/v1/chat/completions", json=CHAT, headers={"Origin": ALLOWED} | AUTH),
        await cors.post("/v1/chat/completions", json=CHAT, headers={"Origin": ALLOWED}),
    ]
    assert all("Access-Control-Allow-Credentials" not in r.headers for r in responses)


@pytest.mark.parametrize(
    ("origins", "error"),
    [
        (["app.example.com"], "is not an origin"),
        (["https://app.example.com/path"], "is not an origin"),
        (["*", ALLOWED], "list it alone"),
    ],
)
def test_origins_are_checked(origins: list[str], error: str) -> None:
    with pytest.raises(ConfigError, match=f"cors_origins.*{error}"):
        load_config(None, {"cors_origins": origins})
    assert GatewayConfig(cors_origins=[" HTTPS://App.Example.com/ "]).cors_origins == [ALLOWED]
