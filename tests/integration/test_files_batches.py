"""Files and Batches over the fake engines, in-process: uploads streamed to a tmp data dir, batches
run by the app's own runner through the REST routes' planning and formats, invalid lines in the
error file, cancellation, projects kept apart, and a restart that resumes without redoing lines."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.api.context import LEDGER
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, ProjectConfig
from gateway.text.tokenizer import Tokenizer
from tests.integration.conftest import MODEL, REPLY
from tests.integration.fake_encoder import EMBEDDER, ENCODERS, FakeEncoders, gateway_models
from tests.integration.fake_engine import FakeEngine

KEY_A, RECORD_A = new_key("team-a", "a")
KEY_B, RECORD_B = new_key("team-b", "b")
Start = Callable[..., Awaitable[TestClient]]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def config(data_dir: Path, **extra: Any) -> GatewayConfig:
    settings: dict[str, Any] = {"grpc_port": None, "data_dir": data_dir, "models": gateway_models()} | extra
    return GatewayConfig(**settings)


@pytest.fixture
def start(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    engine: FakeEngine,
    encoders: FakeEncoders,
    tmp_path: Path,
) -> Start:
    async def run(**extra: Any) -> TestClient:
        app = create_app(config(tmp_path / "data", **extra), lambda url: encoders if url == ENCODERS else engine)
        return await aiohttp_client(app)

    return run


def chat_line(custom_id: str, content: str = "Hi", **body: Any) -> dict[str, Any]:
    request = {"model": MODEL, "messages": [{"role": "user", "content": content}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n" for line in lines)


async def upload(
    client: TestClient, content: bytes, purpose: str = "batch", headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("purpose", purpose)
    form.add_field("file", content, filename="input.jsonl", content_type="application/jsonl")
    return await client.post("/v1/files", data=form, headers=headers)


async def create_batch(
    client: TestClient, lines: list[Any], endpoint: str = "/v1/chat/completions", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    resp = await upload(client, jsonl(lines), headers=headers)
    assert resp.status == 200, await resp.text()
    file_id = (await resp.json())["id"]
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", "metadata": {"run": "t"}}
    resp = await client.post("/v1/batches", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    batch: dict[str, Any] = await resp.json()
    assert batch["status"] == "validating" and batch["metadata"] == {"run": "t"}
    return batch


async def wait_for(
    client: TestClient,
    batch_id: str,
    done: Callable[[dict[str, Any]], bool],
    within: float = 120.0,  # a bound against a hang, generous for a busy CI machine
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        batch: dict[str, Any] = await (await client.get(f"/v1/batches/{batch_id}", headers=headers)).json()
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            pytest.fail(f"batch not there within {within}s: {batch}")
        await asyncio.sleep(0.05)


def ended(batch: dict[str, Any]) -> bool:
    return batch["status"] in ("completed", "failed", "expired", "cancelled")


async def lines_of(client: TestClient, file_id: str | None, headers: dict[str, str] | None = None) -> list[Any]:
    assert file_id is not None
    resp = await client.get(f"/v1/files/{file_id}/content", headers=headers)
    assert resp.status == 200
    return [orjson.loads(line) for line in (await resp.read()).splitlines()]


async def test_files_upload_list_get_content_delete(start: Start) -> None:
    client = await start()
    content = jsonl([chat_line(f"r{i}") for i in range(3)])
    ids = []
    for _ in range(3):
        resp = await upload(client, content)
        assert resp.status == 200
        record = await resp.json()
        assert record["object"] == "file" and record["bytes"] == len(content) and record["purpose"] == "batch"
        assert record["filename"] == "input.jsonl" and record["status"] == "processed"
        ids.append(record["id"])
    listed = await (await client.get("/v1/files")).json()
    assert [f["id"] for f in listed["data"]] == ids[::-1] and not listed["has_more"]  # newest first
    first = await (await client.get("/v1/files", params={"limit": "2", "order": "asc"})).json()
    assert [f["id"] for f in first["data"]] == ids[:2] and first["has_more"] and first["last_id"] == ids[1]
    rest = await (await client.get("/v1/files", params={"limit": "2", "order": "asc", "after": ids[1]})).json()
    assert [f["id"] for f in rest["data"]] == ids[2:] and not rest["has_more"]
    assert (await (await client.get("/v1/files", params={"purpose": "batch_output"})).json())["data"] == []
    assert (await client.get("/v1/files", params={"limit": "10001"})).status == 400
    assert (await client.get("/v1/files", params={"order": "up"})).status == 400
    assert (await (await client.get(f"/v1/files/{ids[0]}")).json())["id"] == ids[0]
    resp = await client.get(f"/v1/files/{ids[0]}/content")
    assert resp.status == 200 and await resp.read() == content and resp.headers["x-request-id"]
    resp = await client.delete(f"/v1/files/{ids[0]}")
    assert await resp.json() == {"id": ids[0], "object": "file", "deleted": True}
    for path in (f"/v1/files/{ids[0]}", f"/v1/files/{ids[0]}/content"):
        resp = await client.get(path)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    assert (await client.delete(f"/v1/files/{ids[0]}")).status == 404


async def test_upload_refusals(start: Start, tmp_path: Path) -> None:
    client = await start(max_file_bytes=4096)
    resp = await upload(client, b"{}\n", purpose="fine-tune")
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "purpose"
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("purpose", "batch")
    resp = await client.post("/v1/files", data=form)
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "file"
    resp = await upload(client, b"x" * 5000)  # streamed past the limit: 413, nothing kept
    assert resp.status == 413
    resp = await client.post("/v1/files", json={"purpose": "batch"})
    assert resp.status == 415
    assert (await (await client.get("/v1/files")).json())["data"] == []
    assert list((tmp_path / "data" / "files").glob("file-*")) == []
    assert list((tmp_path / "data" / "files" / ".partial").iterdir()) == []


async def test_projects_do_not_see_each_others_files_or_batches(start: Start) -> None:
    client = await start(projects=[ProjectConfig(id="team-a"), ProjectConfig(id="team-b")], keys=[RECORD_A, RECORD_B])
    a, b = bearer(KEY_A), bearer(KEY_B)
    batch = await create_batch(client, [chat_line("one")], headers=a)
    file_id = batch["input_file_id"]
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content", f"/v1/batches/{batch['id']}"):
        assert (await client.get(path, headers=b)).status == 404
        assert (await client.get(path, headers=a)).status == 200
    assert (await client.delete(f"/v1/files/{file_id}", headers=b)).status == 404
    assert (await client.post(f"/v1/batches/{batch['id']}/cancel", headers=b)).status == 404
    assert (await (await client.get("/v1/files", headers=b)).json())["data"] == []
    assert (await (await client.get("/v1/batches", headers=b)).json())["data"] == []
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert (await client.post("/v1/batches", json=body, headers=b)).status == 404
    assert (await client.get(f"/team-a/v1/files/{file_id}", headers=a)).status == 200
    done = await wait_for(client, batch["id"], ended, headers=a)
    assert done["status"] == "completed"
    assert (await client.get(f"/v1/files/{done['output_file_id']}", headers=b)).status == 404


async def test_chat_batch_completes_in_openai_format(start: Start, engine: FakeEngine) -> None:
    client = await start()
    lines = [chat_line(f"req-{i}", f"question {i}", max_tokens=5) for i in range(12)]
    batch = await create_batch(client, lines)
    done = await wait_for(client, batch["id"], ended)
    assert done["status"] == "completed" and done["error_file_id"] is None
    assert done["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert done[stamp] is not None
    assert done["model"] == MODEL and done["usage"]["output_tokens"] > 0
    out = await lines_of(client, done["output_file_id"])
    assert [line["custom_id"] for line in out] == [f"req-{i}" for i in range(12)]  # input order
    for line in out:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        body = response["body"]
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] == 5
    assert len(engine.requests) == 12
    output = await (await client.get(f"/v1/files/{done['output_file_id']}")).json()
    assert output["purpose"] == "batch_output" and output["filename"] == f"batch_{batch['id']}_output.jsonl"
    listed = await (await client.get("/v1/batches")).json()
    assert [b["id"] for b in listed["data"]] == [batch["id"]]
    # the ledger has one batch record per line
    ledger = client.app[LEDGER]
    await asyncio.to_thread(ledger.flush)
    usage = await (await client.get("/v1/usage", params={"batch": "true"})).json()
    assert usage["totals"]["num_requests"] == 12 and usage["totals"]["output_tokens"] == 12 * 5
    assert usage["totals"]["input_tokens"] == done["usage"]["input_tokens"]
    assert all(r["batch"] for bucket in usage["data"] for r in bucket["results"])


async def test_whole_bodies_match_the_rest_routes(start: Start, tokenizer: Tokenizer) -> None:
    client = await start()
    rest = await (await client.post("/v1/chat/completions", json=chat_line("x")["body"])).json()
    completion = {"model": MODEL, "prompt": "Say hi", "max_tokens": 4}
    rest_completion = await (await client.post("/v1/completions", json=completion)).json()
    batch = await create_batch(client, [chat_line("x")])
    done = await wait_for(client, batch["id"], ended)
    body = (await lines_of(client, done["output_file_id"]))[0]["response"]["body"]
    ignore = {"id", "created"}
    assert {k: v for k, v in body.items() if k not in ignore} == {k: v for k, v in rest.items() if k not in ignore}
    assert body["choices"][0]["message"]["content"] == REPLY
    line = {"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": completion}
    batch = await create_batch(client, [line], endpoint="/v1/completions")
    done = await wait_for(client, batch["id"], ended)
    body = (await lines_of(client, done["output_file_id"]))[0]["response"]["body"]
    assert {k: v for k, v in body.items() if k not in ignore} == {
        k: v for k, v in rest_completion.items() if k not in ignore
    }


async def test_embeddings_batch(start: Start) -> None:
    client = await start()
    body = {"model": EMBEDDER, "input": ["one text", "another"]}
    rest = await (await client.post("/v1/embeddings", json=body)).json()
    line = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": body}
    batch = await create_batch(client, [line], endpoint="/v1/embeddings")
    done = await wait_for(client, batch["id"], ended)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 1
    assert (await lines_of(client, done["output_file_id"]))[0]["response"]["body"] == rest


async def test_invalid_lines_go_to_the_error_file(start: Start) -> None:
    client = await start()
    lines: list[Any] = [
        chat_line("good-1"),
        b"{not json",
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},  # no custom_id
        chat_line("good-1"),  # a duplicate
        {**chat_line("wrong-url"), "url": "/v1/embeddings"},
        {**chat_line("wrong-method"), "method": "GET"},
        chat_line("bad-body", temperature="hot"),
        chat_line("unknown-param", frobnicate=1),
        chat_line("streams", stream=True),
        chat_line("no-model", model="nope"),  # valid as a body: fails when it runs (404)
        b"",  # a blank line is no request
        chat_line("good-2"),
    ]
    batch = await create_batch(client, lines)
    done = await wait_for(client, batch["id"], ended)
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 11, "completed": 2, "failed": 9}
    out = await lines_of(client, done["output_file_id"])
    assert [line["custom_id"] for line in out] == ["good-1", "good-2"]
    errors = await lines_of(client, done["error_file_id"])
    codes = [(line["custom_id"], line["error"]["code"]) for line in errors]
    assert codes == [
        (None, "invalid_json"),
        (None, "missing_custom_id"),
        ("good-1", "duplicate_custom_id"),
        ("wrong-url", "invalid_url"),
        ("wrong-method", "invalid_method"),
        ("bad-body", "invalid_request_error"),
        ("unknown-param", "invalid_request_error"),
        ("streams", "unsupported_parameter"),
        ("no-model", "model_not_found"),
    ]
    by_id = {line["custom_id"]: line for line in errors}
    assert by_id["bad-body"]["response"]["status_code"] == 400
    assert by_id["bad-body"]["response"]["body"]["error"]["param"] == "temperature"
    assert by_id["no-model"]["response"]["status_code"] == 404
    assert by_id["wrong-url"]["response"] is None
    for line in errors:
        assert line["id"].startswith("batch_req_") and line["error"]["message"]


async def test_a_file_of_only_invalid_lines_fails_the_batch(start: Start) -> None:
    client = await start()
    batch = await create_batch(client, [b"nope", {"custom_id": "x"}])
    done = await wait_for(client, batch["id"], ended)
    assert done["status"] == "failed" and done["failed_at"] and done["output_file_id"] is None
    assert [(e["code"], e["line"]) for e in done["errors"]["data"]] == [("invalid_json", 1), ("invalid_method", 2)]
    empty = await create_batch(client, [b""])
    done = await wait_for(client, empty["id"], ended)
    assert done["status"] == "failed" and done["errors"]["data"][0]["code"] == "empty_file"


async def test_batch_create_refusals(start: Start) -> None:
    client = await start()
    resp = await upload(client, jsonl([chat_line("a")]))
    file_id = (await resp.json())["id"]
    good = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for change, param in (
        ({"completion_window": "1h"}, "completion_window"),
        ({"endpoint": "/v1/responses"}, "endpoint"),
        ({"input_file_id": "file-nope"}, "input_file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"extra": 1}, "extra"),
    ):
        resp = await client.post("/v1/batches", json=good | change)
        assert resp.status in (400, 404), change
        assert (await resp.json())["error"]["param"] == param
    assert (await client.get("/v1/batches/batch_nope")).status == 404
    assert (await client.get("/v1/batches", params={"limit": "0"})).status == 400


async def test_cancel(start: Start, engine: FakeEngine) -> None:
    engine.delay = 0.05  # a line takes about a second
    client = await start(batch_concurrency=2)
    batch = await create_batch(client, [chat_line(f"c{i}") for i in range(40)])
    await wait_for(client, batch["id"], lambda b: b["request_counts"]["completed"] >= 2)
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel")
    assert resp.status == 200 and (await resp.json())["status"] in ("cancelling", "cancelled")
    done = await wait_for(client, batch["id"], ended)
    assert done["status"] == "cancelled" and done["cancelling_at"] and done["cancelled_at"]
    counts = done["request_counts"]
    assert counts["total"] == 40 and 2 <= counts["completed"] < 40 and counts["failed"] == 0
    out = await lines_of(client, done["output_file_id"])
    assert len(out) == counts["completed"]
    assert (await client.post(f"/v1/batches/{batch['id']}/cancel")).status == 200  # still cancelled
    finished = await create_batch(client, [chat_line("x", max_tokens=1)])
    engine.delay = 0.0
    await wait_for(client, finished["id"], ended)
    resp = await client.post(f"/v1/batches/{finished['id']}/cancel")
    assert resp.status == 400


async def test_restart_resumes_without_redoing_lines(
    engine: FakeEngine, encoders: FakeEncoders, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    """A gateway that stops mid-batch (its runner cut off as by SIGINT) and one started on the same
    data dir: every line in the output once; a line finished before the stop is not sent again."""
    engine.delay = 0.02
    settings = config(tmp_path / "data", batch_concurrency=3)
    n = 30

    async def serve() -> TestClient:
        app = create_app(settings, lambda url: encoders if url == ENCODERS else engine)
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    client = await serve()
    batch = await create_batch(client, [chat_line(f"r{i}", f"line number {i}") for i in range(n)])
    first = await wait_for(client, batch["id"], lambda b: b["request_counts"]["completed"] >= 5)
    await client.close()  # the runner stops; lines in flight are halted and not recorded
    recorded = _recorded(settings, batch["id"])
    assert first["request_counts"]["completed"] <= len(recorded) < n
    engine.requests.clear()
    client = await serve()
    try:
        done = await wait_for(client, batch["id"], ended)
        assert done["status"] == "completed" and done["request_counts"] == {"total": n, "completed": n, "failed": 0}
        out = await lines_of(client, done["output_file_id"])
    finally:
        await client.close()
    assert [line["custom_id"] for line in out] == [f"r{i}" for i in range(n)]
    rerun = [_prompt(tokenizer, r.prompt_ids) for r in engine.requests]
    assert len(rerun) == len(set(rerun))  # each line sent once after the restart
    assert set(rerun) == {f"line number {i}" for i in range(n)} - recorded  # and only those not recorded


def _recorded(settings: GatewayConfig, batch_id: str) -> set[str]:
    """The prompts of the lines recorded as done."""
    from gateway.batches.catalog import Catalog

    catalog = Catalog(settings.data_dir / "batches.sqlite3")
    try:
        return {f"line number {line.idx}" for line in catalog.lines(batch_id, -1, 10_000) if line.done}
    finally:
        catalog.close()


def _prompt(tokenizer: Tokenizer, ids: list[int]) -> str:
    text = tokenizer.decode(ids)
    return "line number " + text.split("line number ")[1].split("<")[0].split("\n")[0].strip()


async def test_batch_lines_leave_interactive_requests_their_slots(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    engine: FakeEngine,
    encoders: FakeEncoders,
    tmp_path: Path,
) -> None:
    """Two slots and no queue: an interactive request that finds none gets 503 at once. Batch lines
    (four at a time) stay under the high-water mark (one), so interactive requests always find one."""
    engine.delay = 0.01
    models = gateway_models()
    models[0] = models[0].model_copy(update={"max_in_flight": 2, "max_queue": 0})
    settings = config(tmp_path / "data", models=models, batch_concurrency=4)
    client = await aiohttp_client(create_app(settings, lambda url: encoders if url == ENCODERS else engine))
    batch = await create_batch(client, [chat_line(f"b{i}") for i in range(30)])
    await wait_for(client, batch["id"], lambda b: b["request_counts"]["completed"] >= 1)
    statuses = []
    while (current := await wait_for(client, batch["id"], lambda b: True))["status"] == "in_progress":
        resp = await client.post("/v1/chat/completions", json=chat_line("i")["body"])
        statuses.append(resp.status)
    assert len(statuses) >= 3 and set(statuses) == {200}, statuses
    done = await wait_for(client, batch["id"], ended)
    assert done["request_counts"]["completed"] == 30 and current["status"] in ("finalizing", "completed")


async def test_expired_batch_reports_its_lines_not_run(start: Start, engine: FakeEngine, tmp_path: Path) -> None:
    """A batch whose window passed before it ran: ``expired``, each line in the error file as batch_expired."""
    engine.delay = 0.05
    client = await start(batch_concurrency=1)
    busy = await create_batch(client, [chat_line(f"busy{i}") for i in range(50)])  # the runner's one batch
    await wait_for(client, busy["id"], lambda b: b["status"] == "in_progress")
    late = await create_batch(client, [chat_line("a"), chat_line("b")])
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "batches.sqlite3", timeout=10)) as db:
        db.execute("UPDATE batches SET expires_at = 1 WHERE id = ?", (late["id"],))  # its 24 hours are over
        db.commit()
    await client.post(f"/v1/batches/{busy['id']}/cancel")
    done = await wait_for(client, late["id"], ended)
    assert done["status"] == "expired" and done["expired_at"] and done["output_file_id"] is None
    errors = await lines_of(client, done["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("a", "batch_expired"), ("b", "batch_expired")]


async def test_batch_under_a_redis_lease(start: Start, redis_url: str) -> None:
    client = await start(limits_redis_url=redis_url)
    batch = await create_batch(client, [chat_line(f"r{i}") for i in range(5)])
    done = await wait_for(client, batch["id"], ended)
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 5


async def test_two_processes_share_the_batches_each_line_runs_once(
    engine: FakeEngine, encoders: FakeEncoders, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    """Two gateways on one data dir (as --workers): each batch is run by one of them, every line once."""
    engine.delay = 0.005
    settings = config(tmp_path / "data", batch_concurrency=2)
    clients = []
    for _ in range(2):
        client = TestClient(TestServer(create_app(settings, lambda url: encoders if url == ENCODERS else engine)))
        await client.start_server()
        clients.append(client)
    try:
        batches = [
            await create_batch(clients[k % 2], [chat_line(f"b{k}-{i}", f"line number {k * 100 + i}") for i in range(8)])
            for k in range(4)
        ]
        for batch in batches:
            done = await wait_for(clients[0], batch["id"], ended)
            assert done["status"] == "completed" and done["request_counts"]["completed"] == 8
    finally:
        for client in clients:
            await client.close()
    sent = [_prompt(tokenizer, r.prompt_ids) for r in engine.requests]
    assert len(sent) == len(set(sent)) == 32
