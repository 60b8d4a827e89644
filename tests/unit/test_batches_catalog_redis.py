"""The Redis catalog as replicas on several machines share it, on a real redis-server: one lease
holder per batch, a lapsed holder fenced off, each line recorded once whoever races for it, and
nothing left of a batch's lines once it is finished. (Its semantics beside the SQLite catalog's:
tests/unit/test_batches_store.py, which runs on both.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.batches.catalog_redis import RedisCatalog
from gateway.batches.records import BatchRecord, LineSpan, NewLine


@pytest.fixture
async def replicas(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[RedisCatalog, RedisCatalog]]:
    """Two replicas' catalogs on one Redis (a namespace of this test's own)."""
    prefix = f"test:{tmp_path.name}:"
    a, b = (RedisCatalog(redis_url, prefix=prefix, lease_prefix=prefix + "lease:") for _ in range(2))
    yield a, b
    await a.close()
    await b.close()


async def started(catalog: RedisCatalog, lines: int) -> None:
    record = BatchRecord("batch_1", "p", "key", "/v1/embeddings", "file-in", "24h", "validating", 100, 10**10)
    await catalog.add_batch(record)
    assert await catalog.start_lines("batch_1", [NewLine(LineSpan(i, i, 1, f"c{i}")) for i in range(lines)], None, 110)


async def test_one_holder_and_a_lapsed_one_is_fenced_off(replicas: tuple[RedisCatalog, RedisCatalog]) -> None:
    a, b = replicas
    await started(a, 3)
    lease_a, lease_b = a.lease("a", ttl=0.3), b.lease("b", ttl=0.3)
    try:
        assert await b.candidates(0) == ["batch_1"]
        assert await lease_a.acquire("batch_1")
        assert await b.candidates(0) == [] and not await lease_b.acquire("batch_1")
        assert await a.record_line("batch_1", 0, True, (1, 1), owner=lease_a.fence)
        deadline = asyncio.get_running_loop().time() + 30  # a bound against a hang
        while not await lease_b.acquire("batch_1"):  # a stopped renewing (it died): its key expires
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert not await a.record_line("batch_1", 1, True, (2, 1), owner=lease_a.fence)  # a's late result
        assert await b.record_line("batch_1", 1, True, (3, 1), owner=lease_b.fence)
        assert [s.idx for s in await a.pending_lines("batch_1")] == [2]
    finally:
        await lease_a.close()
        await lease_b.close()


async def test_a_line_raced_for_is_recorded_once(replicas: tuple[RedisCatalog, RedisCatalog]) -> None:
    a, b = replicas
    await started(a, 50)
    attempts = [catalog.record_line("batch_1", idx, True, (idx, 1), (2, 3)) for idx in range(50) for catalog in (a, b)]
    recorded = await asyncio.gather(*attempts)
    assert sum(recorded) == 50
    batch = await b.batch("batch_1")
    assert batch is not None and (batch.completed, batch.input_tokens, batch.output_tokens) == (50, 100, 150)


async def test_a_finished_batch_leaves_no_lines(replicas: tuple[RedisCatalog, RedisCatalog], redis_url: str) -> None:
    a, b = replicas
    await started(a, 2)
    await a.record_line("batch_1", 0, True, (0, 1))
    assert await a.transition("batch_1", ("in_progress",), "finalizing", 120)
    assert not await b.finish("batch_1", ("in_progress",), "completed", 130, [], None, None)  # not from there
    assert await b.finish("batch_1", ("finalizing",), "completed", 130, [], None, None)
    assert not await b.finish("batch_1", ("finalizing",), "completed", 131, [], None, None)  # once
    import redis.asyncio

    client = redis.asyncio.from_url(redis_url, decode_responses=True)
    try:
        left = sorted(await client.keys(a.prefix + "*"))
    finally:
        await client.aclose()
    assert left == sorted(a.prefix + name for name in ("seq", "batch:batch_1", "batches:p"))
    done = await a.batch("batch_1")
    assert (
        done is not None
        and done.status == "completed"
        and done.times
        == {
            "in_progress": 110,
            "finalizing": 120,
            "completed": 130,
        }
    )
