"""What a request must be before the gateway reads it: JSON by media type, decodable, within the size
limit before ``100 Continue``, strictly typed; and a client that leaves is still logged and counted."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import until
from tests.integration.conftest import MAX_BODY, MODEL
from tests.integration.fake_engine import FakeEngine
from tests.integration.raw_http import read_response

CHAT = "/v1/chat/completions"
BODIES = {
    CHAT: {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    "/v1/completions": {"model": MODEL, "prompt": "x", "max_tokens": 2},
}
JSON_BYTES = orjson.dumps(BODIES[CHAT])


@pytest.mark.parametrize("path", BODIES)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
async def test_a_body_that_is_not_json_by_media_type_is_415(
    client: TestClient, path: str, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = await client.post(path, data=orjson.dumps(BODIES[path]), headers=headers, skip_auto_headers=["Content-Type"])
    assert resp.status == 415, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "unsupported_media_type" and error["type"] == "invalid_request_error"
    assert "application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
async def test_json_media_types_are_served(client: TestClient, content_type: str) -> None:
    resp = await client.post(CHAT, data=JSON_BYTES, headers={"Content-Type": content_type})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_body_not_in_its_content_encoding_is_400(client: TestClient, encoding: str) -> None:
    resp = await client.post(
        CHAT, data=b"this is not compressed", headers={"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["code"] in ("malformed_request", "invalid_json")
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_body_is_served(client: TestClient, encoding: str, compress: Any) -> None:
    resp = await client.post(
        CHAT, data=compress(JSON_BYTES), headers={"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    assert resp.status == 200, await resp.text()


async def raw_post(client: TestClient, headers: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert client.host and client.port
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n" + headers)
    await writer.drain()
    return reader, writer


async def test_expect_continue_over_the_limit_is_413_at_once(client: TestClient) -> None:
    reader, writer = await raw_post(client, b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    try:
        resp = await read_response(reader)  # the first answer: no 100 Continue before it
        assert resp.status == 413
        assert resp.json()["error"]["code"] == "request_too_large"
    finally:
        writer.close()


async def test_expect_continue_within_the_limit_continues(client: TestClient) -> None:
    reader, writer = await raw_post(client, b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(JSON_BYTES))
    try:
        assert (await read_response(reader)).status == 100
        writer.write(JSON_BYTES)
        resp = await read_response(reader)
        assert resp.status == 200 and resp.json()["usage"]["completion_tokens"] == 2
    finally:
        writer.close()


async def test_an_unknown_expectation_is_417(client: TestClient) -> None:
    resp = await client.post(CHAT, data=JSON_BYTES, headers={"Content-Type": "application/json", "Expect": "magic"})
    assert resp.status == 417 and (await resp.json())["error"]["code"] == "expectation_failed"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"max_tokens": "4"}, "max_tokens"), ({"max_tokens": True}, "max_tokens"), ({"stream": "yes"}, "stream")],
)
async def test_types_are_not_coerced(client: TestClient, engine: FakeEngine, extra: dict[str, Any], param: str) -> None:
    resp = await client.post(CHAT, json={**BODIES[CHAT], **extra})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
    assert not engine.requests


async def test_json_integers_are_valid_floats(client: TestClient) -> None:
    resp = await client.post(CHAT, json={**BODIES[CHAT], "temperature": 1, "top_p": 1})
    assert resp.status == 200, await resp.text()


NULLS = {
    "n": None,
    "stream": None,
    "stream_options": None,
    "logprobs": None,
    "temperature": None,
    "top_p": None,
    "stop": None,
    "seed": None,
    "presence_penalty": None,
    "frequency_penalty": None,
    "user": None,
    "min_tokens": None,
    "ignore_eos": None,
    "top_k": None,
}


@pytest.mark.parametrize("path", BODIES)
async def test_nulls_are_not_given(client: TestClient, path: str) -> None:
    extra = {**NULLS, "echo": None} if path == "/v1/completions" else {**NULLS, "max_completion_tokens": None}
    given = await client.post(path, json={**BODIES[path], **extra})
    assert given.status == 200, await given.text()
    plain = await (await client.post(path, json=BODIES[path])).json()
    answer = await given.json()
    assert answer["choices"] == plain["choices"] and answer["usage"] == plain["usage"]


@pytest.mark.parametrize("path", BODIES)
@pytest.mark.parametrize("stream", [{"stream": False}, {}, {"stream": None}])
async def test_stream_options_without_stream_is_400(client: TestClient, path: str, stream: dict[str, Any]) -> None:
    resp = await client.post(path, json={**BODIES[path], **stream, "stream_options": {"include_usage": True}})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "stream_options" and "stream" in error["message"]


async def requests_counted(client: TestClient, status: str) -> float:
    text = await (await client.get("/metrics")).text()
    prefix = "gateway_requests_total{"
    return sum(  # every model label: a client may leave before or after its request names the model
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and f'status="{status}"' in line and 'route="/v1/chat/completions"' in line
    )


def access_line(caplog: pytest.LogCaptureFixture, request_id: str) -> str | None:
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    return next((line for line in lines if f'"request_id":"{request_id}"' in line), None)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_leaves_is_logged_and_counted_as_499(
    client: TestClient, engine: FakeEngine, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    before = await requests_counted(client, "499")
    engine.delay = 0.05
    body = orjson.dumps({**BODIES[CHAT], "max_tokens": 100, "stream": stream})
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        reader, writer = await raw_post(
            client, b"x-request-id: gone-1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        if stream:
            assert (await read_head(reader)).startswith(b"HTTP/1.1 200")
        else:
            await until(lambda: bool(engine.requests), 5.0, "generation started")
        writer.close()  # the client goes away before its response ended
        await until(lambda: access_line(caplog, "gone-1") is not None, 5.0, "the access log line")
    assert '"status":499' in (access_line(caplog, "gone-1") or "")
    assert await requests_counted(client, "499") == before + 1


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")
