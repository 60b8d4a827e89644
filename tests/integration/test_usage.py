"""The usage ledger over the fake engines: GET /v1/usage sums exactly what the responses' usage said
(REST under concurrency, gRPC), who may read which project, bad parameters, prices with batch lines at
half, a client gone mid-stream, and records kept across a restart on the same file."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.api.context import LEDGER
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, KeyConfig, ModelConfig, ProjectConfig
from gateway.grpcapi.stubs import pb, pb_grpc
from gateway.usage import account as account_module
from gateway.usage.records import UsageRecord
from perf.stack import free_port
from tests.conftest import WEIGHTS, until
from tests.integration.conftest import MODEL
from tests.integration.fake_encoder import EMBEDDER, ENCODERS, MINILM, FakeEncoders
from tests.integration.fake_engine import FakeEngine
from tests.sse import parse_sse

KEY_A, RECORD_A = new_key("team-a", "a")
KEY_B, RECORD_B = new_key("team-b", "b")
ADMIN, ADMIN_RECORD = new_key("ops", "admin")
PRICE_IN, PRICE_OUT = 0.5, 2.0  # per 1,000 tokens

Serve = Callable[..., Awaitable[TestClient]]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def config(usage_db: Path, grpc_port: int | None = None) -> GatewayConfig:
    return GatewayConfig(
        grpc_port=grpc_port,
        usage_db=usage_db,
        models=[
            ModelConfig(
                id=MODEL,
                triton_model="smollm2",
                tokenizer_dir=WEIGHTS,
                max_output_tokens=64,
                price_input_per_1k=PRICE_IN,
                price_output_per_1k=PRICE_OUT,
            ),
            ModelConfig(id=EMBEDDER, task="embed", triton_model=EMBEDDER, triton_url=ENCODERS, tokenizer_dir=MINILM),
        ],
        projects=[ProjectConfig(id="team-a"), ProjectConfig(id="team-b"), ProjectConfig(id="ops")],
        keys=[RECORD_A, RECORD_B, KeyConfig(**(ADMIN_RECORD.model_dump() | {"admin": True}))],
    )


@pytest.fixture
def serve(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine, encoders: FakeEncoders
) -> Serve:
    async def start(usage_db: Path, grpc_port: int | None = None) -> TestClient:
        app = create_app(config(usage_db, grpc_port), lambda url: encoders if url == ENCODERS else engine)
        return await aiohttp_client(app)

    return start


async def usage(client: TestClient, key: str, path: str = "/v1/usage", **params: str) -> dict[str, Any]:
    resp = await client.get(path, params=params, headers=bearer(key))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def chat(stream: bool = False, max_tokens: int = 8) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def one_request(client: TestClient, kind: str, key: str) -> tuple[int, int]:
    """One request of ``kind``; the (prompt, completion) tokens its response reported."""
    headers = bearer(key)
    if kind == "embeddings":
        resp = await client.post("/v1/embeddings", json={"model": EMBEDDER, "input": ["a b c", "d"]}, headers=headers)
        assert resp.status == 200
        reported = (await resp.json())["usage"]
        return reported["prompt_tokens"], 0
    if kind.startswith("chat"):
        path, body = "/v1/chat/completions", chat(stream=kind == "chat-stream", max_tokens=random.randint(1, 12))
    else:
        path = "/v1/completions"
        body = {"model": MODEL, "prompt": "Once upon", "max_tokens": random.randint(1, 12)}
        if kind == "completions-stream":
            body |= {"stream": True, "stream_options": {"include_usage": True}}
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status == 200
    if body.get("stream"):
        events = parse_sse(await resp.read())
        reported = next(e["usage"] for e in events if isinstance(e, dict) and e.get("usage"))
    else:
        reported = (await resp.json())["usage"]
    return reported["prompt_tokens"], reported["completion_tokens"]


async def test_totals_equal_the_usage_responses_reported(serve: Serve, tmp_path: Path) -> None:
    client = await serve(tmp_path / "usage.sqlite")
    kinds = ["chat", "chat-stream", "completions", "completions-stream", "embeddings"]
    plan = [(kinds[i % len(kinds)], KEY_A if i % 3 else KEY_B) for i in range(50)]
    reported = await asyncio.gather(*(one_request(client, kind, key) for kind, key in plan))
    expected_in, expected_out = sum(r[0] for r in reported), sum(r[1] for r in reported)
    body = await usage(client, ADMIN)
    assert body["totals"]["input_tokens"] == expected_in
    assert body["totals"]["output_tokens"] == expected_out
    results = [r for bucket in body["data"] for r in bucket["results"]]
    models = {(r["project_id"], r["model"]): r for r in results}
    for project, key in (("team-a", KEY_A), ("team-b", KEY_B)):
        mine = [r for (_, k), r in zip(plan, reported, strict=True) if k == key]
        generated = [r for (kind, k), r in zip(plan, reported, strict=True) if k == key and kind != "embeddings"]
        assert models[(project, MODEL)]["input_tokens"] == sum(r[0] for r in generated)
        assert models[(project, MODEL)]["output_tokens"] == sum(r[1] for r in mine)
        assert models[(project, MODEL)]["num_requests"] == len(generated)
        assert models[(project, EMBEDDER)]["num_requests"] == len(mine) - len(generated)
    row = models[("team-a", MODEL)]
    assert row["cost"]["input"] == pytest.approx(row["input_tokens"] * PRICE_IN / 1000)
    assert row["cost"]["output"] == pytest.approx(row["output_tokens"] * PRICE_OUT / 1000)
    assert models[("team-a", EMBEDDER)]["cost"]["total"] == 0  # no price configured
    assert [bucket["end_time"] - bucket["start_time"] for bucket in body["data"]] == [86_400] * len(body["data"])


async def test_who_may_read_which_project(serve: Serve, tmp_path: Path) -> None:
    client = await serve(tmp_path / "usage.sqlite")
    await one_request(client, "chat", KEY_A)
    await one_request(client, "chat", KEY_B)

    def projects(body: dict[str, Any]) -> set[str]:
        return {r["project_id"] for bucket in body["data"] for r in bucket["results"]}

    assert projects(await usage(client, KEY_A)) == {"team-a"}
    assert projects(await usage(client, KEY_A, "/team-a/v1/usage")) == {"team-a"}
    assert projects(await usage(client, KEY_A, project="team-a")) == {"team-a"}
    assert projects(await usage(client, ADMIN)) == {"team-a", "team-b"}  # a read is recorded once answered
    assert projects(await usage(client, ADMIN)) == {"team-a", "team-b", "ops"}  # ops: the admin's first read
    assert projects(await usage(client, ADMIN, project="team-b")) == {"team-b"}
    resp = await client.get("/v1/usage", params={"project": "team-b"}, headers=bearer(KEY_A))
    assert resp.status == 403
    error = (await resp.json())["error"]
    assert error["code"] == "permission_denied" and error["param"] == "project"
    assert (await client.get("/team-b/v1/usage", headers=bearer(KEY_A))).status == 403
    assert (await client.get("/v1/usage")).status == 401
    admin_chat = await client.post("/v1/chat/completions", json=chat(), headers=bearer(ADMIN))
    assert admin_chat.status == 200  # otherwise a normal key


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"start": "yesterday"}, "start"),
        ({"end": "-5"}, "end"),
        ({"start": "2026-01-02", "end": "2026-01-01"}, "end"),
        ({"batch": "maybe"}, "batch"),
        ({"limit": "10"}, "limit"),
    ],
)
async def test_bad_parameters(serve: Serve, tmp_path: Path, params: dict[str, str], param: str) -> None:
    client = await serve(tmp_path / "usage.sqlite")
    resp = await client.get("/v1/usage", params=params, headers=bearer(ADMIN))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


async def test_batch_lines_at_half_price_and_buckets(serve: Serve, tmp_path: Path) -> None:
    client = await serve(tmp_path / "usage.sqlite")
    ledger = client.app[LEDGER]
    day = 1_767_225_600  # 2026-01-01T00:00:00Z
    for when, batch in ((day + 60, False), (day + 120, True), (day + 7_260, True)):
        ledger.append(
            UsageRecord(
                project="team-a",
                model=MODEL,
                endpoint="/v1/chat/completions",
                input_tokens=1000,
                output_tokens=500,
                batch=batch,
                request_id="batch_1-line",
                time=when,
            )
        )
    window = {"start": "2026-01-01", "end": "2026-01-02T00:00:00Z"}
    body = await usage(client, KEY_A, **window)
    assert body["start_time"] == day and body["end_time"] == day + 86_400
    [bucket] = body["data"]
    by_kind = {r["batch"]: r for r in bucket["results"]}
    assert by_kind[False]["cost"] == {"input": 0.5, "output": 1.0, "total": 1.5}
    assert by_kind[True]["cost"] == {"input": 0.5, "output": 1.0, "total": 1.5}  # 2 x 1,000 tokens at half
    assert body["totals"]["cost"]["total"] == 3.0
    hourly = await usage(client, KEY_A, group_by="hour", batch="true", **window)
    assert [(b["start_time"], b["end_time"]) for b in hourly["data"]] == [(day, day + 3600), (day + 7200, day + 10_800)]
    assert hourly["totals"]["num_requests"] == 2
    assert (await usage(client, KEY_A, start=str(day + 86_400), end=str(day + 2 * 86_400)))["data"] == []


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_gone_is_recorded_with_what_was_generated(
    serve: Serve, tmp_path: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    monkeypatch.setattr(account_module, "SETTLE_S", 0.2)
    engine.delay = 0.05
    client = await serve(tmp_path / "usage.sqlite")
    body = chat(stream=stream, max_tokens=60)
    if stream:
        resp = await client.post("/v1/chat/completions", json=body, headers=bearer(KEY_A))
        await resp.content.readline()  # the first event: generation is under way
        resp.close()  # the client goes away
    else:
        with pytest.raises(TimeoutError):  # the client gives up mid-generation
            await asyncio.wait_for(client.post("/v1/chat/completions", json=body, headers=bearer(KEY_A)), 0.3)
    await until(lambda: engine.closed == 1, 60, "the model's stream stopped")

    async def recorded() -> list[dict[str, Any]]:
        body = await usage(client, KEY_A, model=MODEL)
        return [r for bucket in body["data"] for r in bucket["results"]]

    deadline = asyncio.get_running_loop().time() + 10
    while not (rows := await recorded()):
        assert asyncio.get_running_loop().time() < deadline, "no record of the request"
        await asyncio.sleep(0.1)
    [row] = rows
    assert row["num_requests"] == 1 and row["input_tokens"] > 0
    assert 0 < row["output_tokens"] < len(engine.script)  # what was generated before the model stopped
    statuses = await asyncio.to_thread(_select, tmp_path / "usage.sqlite", "SELECT status FROM usage WHERE model != ''")
    assert statuses == {(499,)}


async def test_grpc_calls_are_recorded(serve: Serve, tmp_path: Path) -> None:
    port = free_port()
    client = await serve(tmp_path / "usage.sqlite", port)
    metadata = (("authorization", f"Bearer {KEY_B}"),)
    messages = [pb.ChatMessage(role="user", content="Hi")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        whole = await stub.ChatCompletion(
            pb.ChatCompletionRequest(model=MODEL, messages=messages, sampling=pb.SamplingParams(max_tokens=5)),
            metadata=metadata,
        )
        chunks = [
            chunk
            async for chunk in stub.StreamChatCompletion(
                pb.ChatCompletionRequest(model=MODEL, messages=messages, sampling=pb.SamplingParams(max_tokens=7)),
                metadata=metadata,
            )
        ]
        embedded = await stub.Embed(pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=["a b c"])), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ChatCompletion(pb.ChatCompletionRequest(model="nope", messages=messages), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    streamed = chunks[-1].usage
    body = await usage(client, KEY_B)
    assert body["totals"]["input_tokens"] == (
        whole.usage.prompt_tokens + streamed.prompt_tokens + embedded.usage.prompt_tokens
    )
    assert body["totals"]["output_tokens"] == whole.usage.completion_tokens + streamed.completion_tokens == 5 + 7
    assert body["totals"]["num_requests"] == 4  # the refused call too
    query = "SELECT endpoint, status FROM usage WHERE endpoint LIKE 'grpc:%'"
    endpoints = await asyncio.to_thread(_select, tmp_path / "usage.sqlite", query)
    assert endpoints == {
        ("grpc:ChatCompletion", 200),
        ("grpc:ChatCompletion", 404),
        ("grpc:StreamChatCompletion", 200),
        ("grpc:Embed", 200),
    }


def _select(path: Path, query: str) -> set[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return set(conn.execute(query).fetchall())


async def test_records_survive_a_restart(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite"
    first = await serve(path)
    reported = [await one_request(first, "chat", KEY_A) for _ in range(3)]
    await first.close()  # the app's cleanup writes the ledger out
    second = await serve(path)
    body = await usage(second, KEY_A, model=MODEL)
    assert body["totals"]["input_tokens"] == sum(r[0] for r in reported)
    assert body["totals"]["output_tokens"] == sum(r[1] for r in reported)
    assert body["totals"]["num_requests"] == 3
