"""Two gateway replicas that share nothing on disk (a data dir each), only one Redis (the catalog, the
leases, the results logs) and one S3-compatible bucket (moto's server: the file contents): a file
uploaded to one is read from the other, a batch created on one is seen and finished by either, each
line run once, and a replica stopped mid-batch is taken over without redoing a line or losing one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.batches.catalog_redis import RedisCatalog
from gateway.text.tokenizer import Tokenizer
from tests.integration.fake_encoder import ENCODERS, FakeEncoders
from tests.integration.fake_engine import FakeEngine
from tests.integration.test_files_batches import _prompt, chat_line, config, create_batch, ended, lines_of, wait_for

Serve = Callable[[str], Awaitable[TestClient]]


@pytest.fixture
async def shared_redis(redis_url: str) -> AsyncIterator[str]:
    """A database of the test redis-server of this module's own, empty before and after."""
    import redis.asyncio

    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.asyncio.from_url(url)
    await client.flushdb()
    try:
        yield url
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def serve(
    engine: FakeEngine, encoders: FakeEncoders, tmp_path: Path, shared_redis: str, s3_url: str, s3_bucket: str
) -> AsyncIterator[Serve]:
    """Starts a replica (its own data dir) on the shared Redis and bucket; each is closed after the test."""
    started: list[TestClient] = []

    async def start(name: str) -> TestClient:
        shared: dict[str, Any] = {
            "batches_redis_url": shared_redis,
            "files_s3_url": s3_url,
            "files_s3_bucket": s3_bucket,
            "files_s3_prefix": "replicas/",
            "batch_concurrency": 2,
        }
        app = create_app(config(tmp_path / name, **shared), lambda url: encoders if url == ENCODERS else engine)
        client = TestClient(TestServer(app))
        await client.start_server()
        started.append(client)
        return client

    yield start
    for client in started:
        await client.close()


async def test_two_replicas_share_files_and_batches(
    serve: Serve, engine: FakeEngine, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    engine.delay = 0.002
    a, b = await serve("a"), await serve("b")
    n = 12
    batch = await create_batch(a, [chat_line(f"r{i}", f"line number {i}") for i in range(n)])
    source = batch["input_file_id"]
    assert (await (await b.get(f"/v1/files/{source}")).json())["bytes"] > 0
    uploaded = await (await b.get(f"/v1/files/{source}/content")).read()
    assert uploaded == await (await a.get(f"/v1/files/{source}/content")).read()
    assert [x["id"] for x in (await (await b.get("/v1/batches")).json())["data"]] == [batch["id"]]
    done = await wait_for(b, batch["id"], ended)
    assert done["status"] == "completed" and done["request_counts"] == {"total": n, "completed": n, "failed": 0}
    out = await lines_of(a, done["output_file_id"])
    assert [line["custom_id"] for line in out] == [f"r{i}" for i in range(n)]
    assert out == await lines_of(b, done["output_file_id"])
    sent = [_prompt(tokenizer, r.prompt_ids) for r in engine.requests]
    assert sorted(sent) == sorted(f"line number {i}" for i in range(n))  # each line once, by either replica
    assert (await b.delete(f"/v1/files/{source}")).status == 200
    assert (await a.get(f"/v1/files/{source}/content")).status == 404
    for name in ("a", "b"):  # nothing of the files or batches on either replica's disk
        assert not {"files", "batches", "batches.sqlite3"} & {p.name for p in (tmp_path / name).iterdir()}


async def test_a_replica_stopped_mid_batch_is_taken_over(
    serve: Serve, engine: FakeEngine, tokenizer: Tokenizer, shared_redis: str
) -> None:
    """Replica A runs the batch alone, then stops (its runner cut off, as by SIGINT); B, started
    meanwhile, takes it over: the lines A recorded are not sent again, their results (A's) are in the
    output B assembles, and every other line is sent once."""
    engine.delay = 0.02
    n = 30
    a = await serve("a")
    batch = await create_batch(a, [chat_line(f"r{i}", f"line number {i}") for i in range(n)])
    await wait_for(a, batch["id"], lambda x: x["request_counts"]["completed"] >= 5)
    b = await serve("b")
    await a.close()  # lines in flight are halted and not recorded; the lease is released
    catalog = RedisCatalog(shared_redis)
    try:
        recorded = {f"line number {line.idx}" for line in await catalog.lines(batch["id"], -1, n) if line.done}
    finally:
        await catalog.close()
    assert 5 <= len(recorded) < n
    engine.requests.clear()
    done = await wait_for(b, batch["id"], ended)
    assert done["status"] == "completed" and done["request_counts"] == {"total": n, "completed": n, "failed": 0}
    out = await lines_of(b, done["output_file_id"])
    assert [line["custom_id"] for line in out] == [f"r{i}" for i in range(n)]
    rerun = [_prompt(tokenizer, r.prompt_ids) for r in engine.requests]
    assert len(rerun) == len(set(rerun))  # each line sent once after the takeover
    assert set(rerun) == {f"line number {i}" for i in range(n)} - recorded  # and only those not recorded
