"""Batch leases: one holder at a time, renewed while held, taken over once lapsed; on the catalog's row
(one machine) and on a real redis-server (several machines)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.batches.catalog import Catalog
from gateway.batches.lease import Lease, RedisLease, SqliteLease, owner_id
from gateway.batches.records import BatchRecord


def _catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog(tmp_path / "batches.sqlite3")
    catalog.add_batch(BatchRecord("batch_1", "p", "k", "/v1/embeddings", "file-1", "24h", "in_progress", 0, 10**10))
    return catalog


async def _one_holder_at_a_time(a: Lease, b: Lease) -> None:
    assert await a.acquire("batch_1")
    assert await a.acquire("batch_1")  # again: still its own
    assert not await b.acquire("batch_1")
    assert await a.renew("batch_1") and not await b.renew("batch_1")
    await b.release("batch_1")  # not b's to release
    assert not await b.acquire("batch_1")
    await a.release("batch_1")
    assert await b.acquire("batch_1") and not await a.renew("batch_1")


async def _lapses(a: Lease, b: Lease) -> None:
    assert await a.acquire("batch_1")
    assert not await b.acquire("batch_1")
    await asyncio.sleep(a.ttl * 1.5)  # a stopped renewing (it died)
    assert await b.acquire("batch_1")
    assert not await a.renew("batch_1")  # a learns it lost the lease


async def test_sqlite_lease(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    other = Catalog(catalog.path)  # another process's connection
    a, b = SqliteLease(catalog, owner_id()), SqliteLease(other, owner_id())
    assert a.owner != b.owner and a.fence == a.owner
    await _one_holder_at_a_time(a, b)
    assert catalog.candidates(0) == []  # held: no candidate for anyone else
    await b.release("batch_1")
    assert catalog.candidates(0) == ["batch_1"]


async def test_sqlite_lease_lapses(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    await _lapses(SqliteLease(catalog, "a", ttl=0.2), SqliteLease(Catalog(catalog.path), "b", ttl=0.2))


async def test_redis_lease(redis_url: str) -> None:
    a, b = RedisLease(redis_url, "a", prefix="test-lease-1:"), RedisLease(redis_url, "b", prefix="test-lease-1:")
    try:
        assert a.fence is None
        await _one_holder_at_a_time(a, b)
    finally:
        await a.close()
        await b.close()


async def test_redis_lease_lapses(redis_url: str) -> None:
    a = RedisLease(redis_url, "a", ttl=0.2, prefix="test-lease-2:")
    b = RedisLease(redis_url, "b", ttl=0.2, prefix="test-lease-2:")
    try:
        await _lapses(a, b)
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("ttl", [30.0])
async def test_owner_ids_differ(ttl: float) -> None:
    assert len({owner_id() for _ in range(5)}) == 5
