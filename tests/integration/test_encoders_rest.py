"""The REST side of the encoder and audio models (/v1/embeddings, /v1/rerank, /v1/score,
/v1/audio/transcriptions, /tokenize) over the fake Triton of :mod:`tests.integration.fake_encoder`:
what a real model cannot be made to do on cue, keys, limits, metrics, the access log, upstream
failures, multipart edge cases, a stream that fails mid-way, and the input count limit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.app import create_app
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, KeyConfig, LimitsConfig, ModelConfig, ProjectConfig
from gateway.core.encode import BATCHES_IN_FLIGHT
from gateway.core.limits import MAX_EMBEDDING_INPUTS
from gateway.errors import UpstreamError, UpstreamInterrupted
from gateway.text.tokenizer import Tokenizer
from tests.conftest import until
from tests.integration.conftest import MODEL
from tests.integration.fake_encoder import (
    EMBEDDER,
    ENCODERS,
    MAX_BATCH,
    SCORER,
    WHISPER,
    FakeEncoders,
    gateway_models,
    unit,
    vector,
    wav,
)
from tests.integration.fake_engine import FakeEngine
from tests.integration.raw_http import read_response

KEY, RECORD = new_key("team", "full")
NARROW, NARROW_RECORD = new_key("narrow", "chat-only")  # its project may use the chat model only
PROJECTS = [ProjectConfig(id="team"), ProjectConfig(id="narrow", models=[MODEL])]
AUTH = {"Authorization": f"Bearer {KEY}"}
TRANSCRIPT = "<|en|><|transcribe|><|0.00|> Hello.<|0.50|><|0.50|> World.<|1.00|>"
BOUNDARY = "gateway-test-boundary"

Serve = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def serve(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    engine: FakeEngine,
    encoders: FakeEncoders,
    minilm: Tokenizer,
) -> Serve:
    """Start the gateway (REST only) over the fakes; keywords override GatewayConfig's fields."""

    async def start(models: list[ModelConfig] | None = None, **config: Any) -> TestClient:
        settings = GatewayConfig(grpc_port=None, models=models or gateway_models(), **config)
        return await aiohttp_client(create_app(settings, lambda url: encoders if url == ENCODERS else engine))

    return start


@pytest.fixture
async def rest(serve: Serve) -> TestClient:
    """The gateway without keys (auth off: every request is the ``default`` project's)."""
    return await serve()


@pytest.fixture
async def keyed(serve: Serve) -> TestClient:
    return await serve(projects=PROJECTS, keys=[RECORD, NARROW_RECORD])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def with_limits(limits: LimitsConfig) -> KeyConfig:
    return RECORD.model_copy(update={"limits": limits})


def audio_form(model: str = WHISPER, audio: bytes | None = None, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData({"model": model, **fields})
    form.add_field("file", wav(1.0) if audio is None else audio, filename="a.wav", content_type="audio/wav")
    return form


def multipart(fields: list[tuple[str, str]], files: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body written by hand (any field any number of times) and its Content-Type."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'.encode() for n, v in fields]
    for data in files:
        head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        parts.append(f"{head}Content-Type: audio/wav\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={BOUNDARY}"


async def error_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """The OpenAI error object of a response that must have ``status``."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    error: dict[str, Any] = orjson.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def sse_events(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(block[len("data: ") :]) for block in text.split("\n\n") if block.startswith("data: ")]


# One request per route, to any model: (path, how it is sent)
ENDPOINTS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "embeddings": ("/v1/embeddings", lambda m: {"json": {"model": m, "input": ["hello world"]}}),
    "rerank": ("/v1/rerank", lambda m: {"json": {"model": m, "query": "q", "documents": ["a b", "c"]}}),
    "score": ("/v1/score", lambda m: {"json": {"model": m, "text_1": "q", "text_2": ["a b", "c"]}}),
    "transcriptions": ("/v1/audio/transcriptions", lambda m: {"data": audio_form(m)}),
    "tokenize": ("/tokenize", lambda m: {"json": {"model": m, "prompt": "hello world"}}),
}
MODEL_OF = {"embeddings": EMBEDDER, "rerank": SCORER, "score": SCORER, "transcriptions": WHISPER, "tokenize": EMBEDDER}


async def call(client: TestClient, endpoint: str, headers: dict[str, str], model: str | None = None) -> Any:
    path, request = ENDPOINTS[endpoint]
    return await client.post(path, headers=headers, **request(model or MODEL_OF[endpoint]))


# ------------------------------------------------------------------------------------------- keys


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_no_or_a_bad_key_is_401(keyed: TestClient, encoders: FakeEncoders, endpoint: str) -> None:
    for headers in ({}, bearer(KEY + "x"), bearer("not-a-key"), {"Authorization": KEY}):
        error = await error_of(await call(keyed, endpoint, headers), 401)
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert not encoders.calls
    encoders.transcripts = [TRANSCRIPT]
    resp = await call(keyed, endpoint, AUTH)
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_model_outside_the_keys_project_is_404_as_one_that_does_not_exist(
    keyed: TestClient, encoders: FakeEncoders, endpoint: str
) -> None:
    answers = []
    for model in (MODEL_OF[endpoint], "no-such-model"):
        resp = await call(keyed, endpoint, bearer(NARROW), model)
        error = await error_of(resp, 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        answers.append(orjson.dumps(error).decode().replace(model, "<model>"))
    assert answers[0] == answers[1]
    assert not encoders.calls


# ----------------------------------------------------------------------------------------- limits


async def test_tokens_per_minute_reserves_the_exact_prompt_tokens(serve: Serve, minilm: Tokenizer) -> None:
    texts = ["the budget is exactly this request", "and this line"]
    budget = sum(len(ids) for ids, _ in minilm.encode_inputs(texts))
    client = await serve(projects=PROJECTS, keys=[with_limits(LimitsConfig(tokens_per_minute=budget))])

    # one token more than the whole budget: refused, and nothing is charged
    over = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": [*texts, "x"]}, headers=AUTH)
    assert (await error_of(over, 429))["code"] == "rate_limit_exceeded"

    exact = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts}, headers=AUTH)
    assert exact.status == 200, await exact.text()
    assert (await exact.json())["usage"]["prompt_tokens"] == budget
    assert exact.headers["x-ratelimit-limit-tokens"] == str(budget)
    assert exact.headers["x-ratelimit-remaining-tokens"] == "0"  # the reserve was the prompt, no more

    second = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["x"]}, headers=AUTH)
    error = await error_of(second, 429)
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_exceeded"
    assert "tokens per minute" in error["message"]
    assert int(second.headers["Retry-After"]) >= 1
    assert second.headers["x-ratelimit-limit-tokens"] == str(budget)
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_requests_per_minute_applies_to_transcriptions(serve: Serve, encoders: FakeEncoders) -> None:
    client = await serve(projects=PROJECTS, keys=[with_limits(LimitsConfig(requests_per_minute=2))])
    encoders.transcripts = [TRANSCRIPT, TRANSCRIPT, TRANSCRIPT]
    for left in ("1", "0"):
        resp = await client.post("/v1/audio/transcriptions", data=audio_form(), headers=AUTH)
        assert resp.status == 200, await resp.text()
        assert resp.headers["x-ratelimit-limit-requests"] == "2"
        assert resp.headers["x-ratelimit-remaining-requests"] == left
    refused = await client.post("/v1/audio/transcriptions", data=audio_form(), headers=AUTH)
    error = await error_of(refused, 429)
    assert error["code"] == "rate_limit_exceeded" and "requests per minute" in error["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(encoders.calls) == 2  # the refused one never reached the model


async def test_concurrency_limit_holds_while_an_embedding_is_in_flight(serve: Serve, encoders: FakeEncoders) -> None:
    client = await serve(projects=[ProjectConfig(id="team", limits=LimitsConfig(max_concurrent=1))], keys=[RECORD])
    body = {"model": EMBEDDER, "input": ["held"]}
    encoders.hold = asyncio.Event()
    first = asyncio.ensure_future(client.post("/v1/embeddings", json=body, headers=AUTH))
    try:
        await until(lambda: bool(encoders.calls), 10.0, "the first request reached the model")
        busy = await client.post("/v1/embeddings", json=body, headers=AUTH)
        assert "concurrent" in (await error_of(busy, 429))["message"]
    finally:
        encoders.hold.set()
    assert (await first).status == 200
    assert (await client.post("/v1/embeddings", json=body, headers=AUTH)).status == 200  # its slot came back


# ---------------------------------------------------------------------------------------- metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: TestClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_count_embedding_tokens_requests_and_audio_seconds(
    rest: TestClient, encoders: FakeEncoders
) -> None:
    before = await scrape(rest)
    resp = await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["one two three", "four"]})
    assert resp.status == 200
    usage = (await resp.json())["usage"]
    encoders.transcripts = ["<|en|><|transcribe|><|0.00|> Long enough.<|2.50|>"]
    heard = await rest.post("/v1/audio/transcriptions", data=audio_form(audio=wav(2.5)))
    assert heard.status == 200, await heard.text()
    after = await scrape(rest)

    tokens = delta(before, after, "gateway_tokens_total", model=EMBEDDER, project="default", type="input_tokens")
    assert tokens == usage["prompt_tokens"] == usage["total_tokens"] > 0
    route = {"route": "/v1/embeddings", "model": EMBEDDER}
    assert delta(before, after, "gateway_requests_total", **route, status="200") == 1
    assert delta(before, after, "gateway_request_duration_seconds_count", **route) == 1
    audio = delta(before, after, "gateway_audio_seconds_total", model=WHISPER, project="default")
    assert audio == pytest.approx(2.5)
    transcriptions = {"route": "/v1/audio/transcriptions", "model": WHISPER, "status": "200"}
    assert delta(before, after, "gateway_requests_total", **transcriptions) == 1


# ------------------------------------------------------------------------------------- access log


def access_lines(caplog: pytest.LogCaptureFixture) -> dict[str, dict[str, Any]]:
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    return {line["request_id"]: line for line in lines}


async def test_access_log_lines_of_embeddings(keyed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        ok = await keyed.post(
            "/v1/embeddings",
            json={"model": EMBEDDER, "input": ["hello", "world"]},
            headers={**AUTH, "x-request-id": "e-ok"},
        )
        bad = await keyed.post(
            "/v1/embeddings", json={"model": EMBEDDER, "input": ""}, headers={**AUTH, "x-request-id": "e-bad"}
        )
        long = await keyed.post(
            "/v1/embeddings",
            json={"model": EMBEDDER, "input": ["word " * 600]},
            headers={**AUTH, "x-request-id": "e-long"},
        )
    assert ok.status == 200
    assert (await error_of(bad, 400))["param"] == "input"
    assert (await error_of(long, 400))["code"] == "context_length_exceeded"
    lines = access_lines(caplog)
    served = lines["e-ok"]
    assert served["status"] == 200 and served["path"] == "/v1/embeddings"
    assert served["model"] == EMBEDDER and served["project"] == "team"
    assert served["prompt_tokens"] == (await ok.json())["usage"]["prompt_tokens"] > 0
    assert served["id"].startswith("embd-") and served["completion_tokens"] == 0
    refused = lines["e-bad"]  # refused before the model was looked up: still one line
    assert refused["status"] == 400 and refused["method"] == "POST" and refused["path"] == "/v1/embeddings"
    too_long = lines["e-long"]  # refused after: the line names the model and the project
    assert too_long["status"] == 400 and too_long["model"] == EMBEDDER and too_long["project"] == "team"
    assert too_long["prompt_tokens"] == 0


# ------------------------------------------------------------------------------ upstream failures


def fail(encoders: FakeEncoders, how: str) -> None:
    if how == "unavailable":
        encoders.unavailable = True
    else:
        encoders.fail_after = 0
        encoders.fail_with = UpstreamInterrupted if how == "interrupted" else UpstreamError


def recover(encoders: FakeEncoders) -> None:
    encoders.unavailable = False
    encoders.fail_after = None


FAILURES = [("unavailable", 503, "upstream_unavailable"), ("model error", 502, "upstream_error")]
FAILURES += [("interrupted", 502, "upstream_error")]


@pytest.mark.parametrize("endpoint", ["embeddings", "rerank", "score", "transcriptions"])
@pytest.mark.parametrize(("how", "status", "code"), FAILURES)
async def test_an_upstream_failure_is_an_openai_error_and_the_next_request_is_served(
    rest: TestClient, encoders: FakeEncoders, endpoint: str, how: str, status: int, code: str
) -> None:
    fail(encoders, how)
    for _ in range(4):  # past eject_after_failures: the only upstream is still tried
        error = await error_of(await call(rest, endpoint, {}), status)
        assert error["code"] == code
        assert "Traceback" not in error["message"]
    recover(encoders)
    encoders.transcripts = [TRANSCRIPT]
    resp = await call(rest, endpoint, {})
    assert resp.status == 200, await resp.text()


async def test_an_upstream_that_answers_past_the_deadline_is_504(serve: Serve, encoders: FakeEncoders) -> None:
    client = await serve(models=gateway_models(infer_timeout=0.05))
    encoders.delay = 30.0  # the fake gives up at the call's timeout, as a gRPC deadline does
    body = {"model": EMBEDDER, "input": ["slow"]}
    error = await error_of(await client.post("/v1/embeddings", json=body), 504)
    assert error["code"] == "upstream_timeout" and error["type"] == "timeout"
    encoders.delay = 0.0
    assert (await client.post("/v1/embeddings", json=body)).status == 200


async def test_a_transcript_the_model_does_not_give_is_502(rest: TestClient, encoders: FakeEncoders) -> None:
    encoders.transcripts = []  # an answer without TRANSCRIPTS
    error = await error_of(await rest.post("/v1/audio/transcriptions", data=audio_form()), 502)
    assert error["code"] == "upstream_error"


async def test_a_client_that_leaves_mid_embedding_is_logged_counted_and_frees_its_slot(
    serve: Serve, encoders: FakeEncoders, caplog: pytest.LogCaptureFixture
) -> None:
    client = await serve(projects=[ProjectConfig(id="team", limits=LimitsConfig(max_concurrent=1))], keys=[RECORD])
    assert client.host and client.port
    before = await scrape(client)
    body = orjson.dumps({"model": EMBEDDER, "input": ["gone"]})
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nx-request-id: gone-embed\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    encoders.hold = asyncio.Event()
    try:
        with caplog.at_level(logging.INFO, logger="gateway.access"):
            _, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(head.encode() + body)
            await writer.drain()
            await until(lambda: bool(encoders.calls), 10.0, "the request reached the model")
            writer.close()  # the client goes away while the model works
            await until(lambda: "gone-embed" in access_lines(caplog), 10.0, "the access log line")
    finally:
        encoders.hold.set()
    line = access_lines(caplog)["gone-embed"]
    assert line["status"] == 499 and line["model"] == EMBEDDER and line["project"] == "team"
    after = await scrape(client)
    assert delta(before, after, "gateway_client_disconnects_total", model=EMBEDDER) == 1
    route = {"route": "/v1/embeddings", "model": EMBEDDER}
    assert delta(before, after, "gateway_requests_total", **route, status="499") == 1
    resp = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["next"]}, headers=AUTH)
    assert resp.status == 200, await resp.text()  # its concurrency slot came back


async def test_upstream_failures_of_encoders_are_counted(rest: TestClient, encoders: FakeEncoders) -> None:
    before = await scrape(rest)
    encoders.unavailable = True
    await error_of(await call(rest, "embeddings", {}), 503)
    recover(encoders)
    encoders.fail_after = 0
    await error_of(await call(rest, "transcriptions", {}), 502)
    after = await scrape(rest)
    errors = "gateway_upstream_errors_total"
    assert delta(before, after, errors, model=EMBEDDER, grpc_status="UNAVAILABLE") >= 1
    assert delta(before, after, errors, model=WHISPER, grpc_status="INTERNAL") >= 1


# ------------------------------------------------------------------------------ multipart uploads


async def test_an_upload_over_max_audio_bytes_is_413(serve: Serve, encoders: FakeEncoders) -> None:
    client = await serve(max_audio_bytes=50_000)
    audio = wav(2.0)  # 64 kB
    assert len(audio) > 50_000
    sized = await client.post("/v1/audio/transcriptions", data=audio_form(audio=audio))
    assert (await error_of(sized, 413))["code"] == "request_too_large"

    body, content_type = multipart([("model", WHISPER)], [audio])

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds as it streams in
        for at in range(0, len(body), 8192):
            yield body[at : at + 8192]

    streamed = await client.post("/v1/audio/transcriptions", data=chunks(), headers={"Content-Type": content_type})
    assert (await error_of(streamed, 413))["code"] == "request_too_large"
    assert not encoders.calls
    encoders.transcripts = [TRANSCRIPT]
    small = await client.post("/v1/audio/transcriptions", data=audio_form(audio=wav(1.0)))
    assert small.status == 200, await small.text()


@pytest.mark.parametrize(
    ("fields", "files", "param"),
    [
        ([("model", WHISPER), ("model", WHISPER)], 1, "model"),
        ([("model", WHISPER), ("language", "en"), ("language", "fr")], 1, "language"),
        ([("model", WHISPER)], 2, "file"),
    ],
)
async def test_a_field_given_twice_is_400(
    rest: TestClient, encoders: FakeEncoders, fields: list[tuple[str, str]], files: int, param: str
) -> None:
    body, content_type = multipart(fields, [wav(0.5)] * files)
    resp = await rest.post("/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type})
    error = await error_of(resp, 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert not encoders.calls


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded", None])
async def test_an_upload_that_is_not_multipart_is_415(
    rest: TestClient, encoders: FakeEncoders, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = await rest.post(
        "/v1/audio/transcriptions",
        data=orjson.dumps({"model": WHISPER, "file": "x"}),
        headers=headers,
        skip_auto_headers=["Content-Type"],
    )
    error = await error_of(resp, 415)
    assert error["code"] == "unsupported_media_type" and "multipart/form-data" in error["message"]
    assert not encoders.calls


def _malformed() -> dict[str, tuple[bytes, str]]:
    body, content_type = multipart([("model", WHISPER)], [wav(0.5)])
    unnamed = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    return {
        "no boundary": (body, "multipart/form-data"),
        "another boundary": (body, "multipart/form-data; boundary=other"),
        "no closing boundary": (body[: -len(f"--{BOUNDARY}--\r\n")], content_type),
        "cut short": (body[:2000], content_type),
        "not a form": (b"hello there", content_type),
        "an unnamed part": (unnamed, content_type),
    }


@pytest.mark.parametrize("case", list(_malformed()))
async def test_a_malformed_form_is_400(rest: TestClient, encoders: FakeEncoders, case: str) -> None:
    body, content_type = _malformed()[case]
    resp = await rest.post("/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type})
    error = await error_of(resp, 400)
    assert error["type"] == "invalid_request_error" and "Traceback" not in error["message"]
    assert not encoders.calls
    encoders.transcripts = [TRANSCRIPT]  # and the server goes on
    assert (await rest.post("/v1/audio/transcriptions", data=audio_form())).status == 200


async def expect_continue(client: TestClient, key: str, body: bytes, content_type: str) -> tuple[Any, Any]:
    """Send a transcription's head with ``Expect: 100-continue`` and no body yet: (reader, writer)."""
    assert client.host and client.port
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def test_expect_continue_with_a_bad_key_is_401_before_the_body(serve: Serve, encoders: FakeEncoders) -> None:
    client = await serve(projects=PROJECTS, keys=[RECORD], max_audio_bytes=50_000)
    body, content_type = multipart([("model", WHISPER)], [wav(1.0)])
    reader, writer = await expect_continue(client, KEY + "x", body, content_type)
    try:
        resp = await read_response(reader)  # the first answer: no 100 Continue, and no body was sent
        assert resp.status == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    finally:
        writer.close()
    big, content_type = multipart([("model", WHISPER)], [wav(2.0)])
    reader, writer = await expect_continue(client, KEY, big, content_type)
    try:
        resp = await read_response(reader)  # over max_audio_bytes by its Content-Length
        assert resp.status == 413 and resp.json()["error"]["code"] == "request_too_large"
    finally:
        writer.close()
    encoders.transcripts = [TRANSCRIPT]
    reader, writer = await expect_continue(client, KEY, body, content_type)
    try:
        assert (await read_response(reader)).status == 100
        writer.write(body)
        resp = await read_response(reader)
        assert resp.status == 200 and resp.json()["text"] == "Hello. World."
    finally:
        writer.close()
    assert len(encoders.calls) == 1


# ------------------------------------------------------------------------------ streamed transcripts


async def test_a_stream_whose_upstream_fails_after_the_first_window_ends_with_an_error_event(
    rest: TestClient, encoders: FakeEncoders
) -> None:
    encoders.transcripts = ["<|en|><|transcribe|><|0.00|> One.<|10.00|><|10.00|> Two.<|30.00|>"]
    encoders.fail_after = 1  # window 1 answers, window 2 fails
    resp = await rest.post("/v1/audio/transcriptions", data=audio_form(audio=wav(35.0), stream="true"))
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    events = sse_events(await resp.text())
    assert events[:-1] == [
        {"type": "transcript.text.delta", "delta": "One."},
        {"type": "transcript.text.delta", "delta": " Two."},
    ]
    error = events[-1]["error"]
    assert error["code"] == "upstream_error" and error["type"] == "upstream_error" and error["message"]
    assert not any(e.get("type") == "transcript.text.done" for e in events)
    assert len([c for c in encoders.calls if c[0] == WHISPER]) == 2

    recover(encoders)  # the server goes on serving
    encoders.transcripts = [TRANSCRIPT]
    again = await rest.post("/v1/audio/transcriptions", data=audio_form(stream="true"))
    assert sse_events(await again.text())[-1]["type"] == "transcript.text.done"


async def test_a_stream_whose_first_window_fails_gets_a_status(rest: TestClient, encoders: FakeEncoders) -> None:
    encoders.unavailable = True
    resp = await rest.post("/v1/audio/transcriptions", data=audio_form(audio=wav(35.0), stream="true"))
    assert (await error_of(resp, 503))["code"] == "upstream_unavailable"


# ------------------------------------------------------------------------------ embeddings inputs


async def test_2048_inputs_are_embedded_in_order_and_2049_refused(
    rest: TestClient, encoders: FakeEncoders, minilm: Tokenizer
) -> None:
    texts = [f"item {i} " + "x " * (i % 7) for i in range(MAX_EMBEDDING_INPUTS)]
    assert MAX_EMBEDDING_INPUTS == 2048
    resp = await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts})
    assert resp.status == 200, await resp.text()
    data = (await resp.json())["data"]
    assert [d["index"] for d in data] == list(range(len(texts)))
    rows = [ids for ids, _ in minilm.encode_inputs(texts)]
    expected = np.stack([unit(vector(ids)) for ids in rows])
    np.testing.assert_allclose([d["embedding"] for d in data], expected, rtol=1e-6)
    calls = len(encoders.calls)
    assert calls == -(-len(texts) // MAX_BATCH)

    for too_many in ([*texts, "one more"], [[101, 102]] * (MAX_EMBEDDING_INPUTS + 1)):
        refused = await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": too_many})
        error = await error_of(refused, 400)
        assert error["param"] == "input" and "2048" in error["message"]
    assert len(encoders.calls) == calls


async def test_a_request_split_into_several_calls_keeps_its_order(
    rest: TestClient, encoders: FakeEncoders, minilm: Tokenizer
) -> None:
    # lengths that do not follow the order (the gateway sorts by length into batches)
    texts = [" ".join(["word"] * (1 + (i * 5) % 9)) + f" n{i}" for i in range(3 * MAX_BATCH + 3)]
    resp = await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts, "encoding_format": "float"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    rows = [ids for ids, _ in minilm.encode_inputs(texts)]
    for i, (row, datum) in enumerate(zip(rows, body["data"], strict=True)):
        assert datum["index"] == i
        np.testing.assert_allclose(datum["embedding"], unit(vector(row)), rtol=1e-6)
    batches = [inputs["input_ids"].shape[0] for _, _, inputs in encoders.calls]
    assert len(batches) == 4 and max(batches) == MAX_BATCH and sum(batches) == len(texts)
    assert len({request_id for _, request_id, _ in encoders.calls}) == len(batches)
    assert body["usage"]["prompt_tokens"] == sum(len(r) for r in rows)


async def test_an_upstream_failure_in_one_batch_fails_the_whole_request(
    rest: TestClient, encoders: FakeEncoders
) -> None:
    encoders.fail_after = 2  # two of the four batches answer
    texts = [f"text {i}" for i in range(3 * MAX_BATCH + 1)]
    error = await error_of(await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts}), 502)
    assert error["code"] == "upstream_error"
    recover(encoders)
    assert (await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts})).status == 200


async def test_a_failed_request_sends_no_more_batches(rest: TestClient, encoders: FakeEncoders) -> None:
    encoders.fail_after = 0  # the first batches fail
    texts = [f"text {i}" for i in range(6 * MAX_BATCH)]  # six batches
    error = await error_of(await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts}), 502)
    assert error["code"] == "upstream_error"
    failed = encoders.calls[0][1].rsplit("-", 1)[0]
    recover(encoders)
    assert (await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["next"]})).status == 200
    sent = [request_id for _, request_id, _ in encoders.calls if request_id.startswith(failed + "-")]
    assert len(sent) <= BATCHES_IN_FLIGHT, f"{len(sent)} of 6 batches sent for a request that had failed"
