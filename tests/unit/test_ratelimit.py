"""Token-bucket limits per key and project: RPM, TPM reserve-and-settle, concurrency, headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.auth.keys import Principal
from gateway.config import LimitsConfig
from gateway.errors import RateLimited
from gateway.limits.ratelimit import RateLimiter, duration
from gateway.limits.store import LimitStore, MemoryStore, RedisStore, SqliteStore


def make_store(kind: str, tmp_path: Path, redis_url: str) -> LimitStore:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(tmp_path / "limits.db")
    return RedisStore(redis_url, prefix=f"test:{tmp_path.name}:")  # one namespace per test


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> AsyncIterator[LimitStore]:
    made = make_store(request.param, tmp_path, redis_url)
    yield made
    await made.close()


def principal(key: LimitsConfig | None = None, project: LimitsConfig | None = None, key_id: str = "k1") -> Principal:
    return Principal(key_id, key_id, "team", None, key or LimitsConfig(), project or LimitsConfig())


async def test_requests_per_minute(store: LimitStore) -> None:
    limiter, who = RateLimiter(store), principal(LimitsConfig(requests_per_minute=2))
    first = await limiter.acquire(who, "m", 10)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await limiter.acquire(who, "m", 10)
    with pytest.raises(RateLimited) as err:
        await limiter.acquire(who, "m", 10)
    assert err.value.kind.http_status == 429 and err.value.kind.code == "rate_limit_exceeded"
    assert 25 < (err.value.retry_after or 0) <= 30  # one request refills in 60 / 2 s
    assert err.value.headers["x-ratelimit-remaining-requests"] == "0"
    await limiter.acquire(who, "other-model", 10)  # limits are per model


async def test_tokens_are_reserved_then_settled(store: LimitStore) -> None:
    limiter, who = RateLimiter(store), principal(LimitsConfig(tokens_per_minute=1000))
    grant = await limiter.acquire(who, "m", 800)  # prompt + max_tokens
    assert int(grant.headers["x-ratelimit-remaining-tokens"]) == 200
    with pytest.raises(RateLimited):
        await limiter.acquire(who, "m", 300)
    await grant.release(100)  # it really used 100: 700 come back
    await grant.release(100)  # settling twice changes nothing
    after = await limiter.acquire(who, "m", 300)
    assert 590 <= int(after.headers["x-ratelimit-remaining-tokens"]) <= 610
    with pytest.raises(RateLimited, match="tokens per minute"):
        await limiter.acquire(who, "m", 5000)  # larger than the budget itself


async def test_concurrency_and_shared_project_budget(store: LimitStore) -> None:
    limiter = RateLimiter(store)
    project = LimitsConfig(max_concurrent=2)
    a, b = principal(project=project, key_id="a"), principal(project=project, key_id="b")
    grant_a = await limiter.acquire(a, "m", 1)
    await limiter.acquire(b, "m", 1)
    with pytest.raises(RateLimited, match="concurrent"):
        await limiter.acquire(a, "m", 1)  # the project's two slots are taken by two keys
    await grant_a.release(1)
    await limiter.acquire(b, "m", 1)


async def test_a_rejection_consumes_nothing(store: LimitStore) -> None:
    limiter = RateLimiter(store)
    who = principal(LimitsConfig(requests_per_minute=5), LimitsConfig(max_concurrent=1))
    held = await limiter.acquire(who, "m", 1)
    for _ in range(3):
        with pytest.raises(RateLimited):
            await limiter.acquire(who, "m", 1)  # refused by the project scope...
    await held.release(1)
    grant = await limiter.acquire(who, "m", 1)  # ...without spending the key's requests
    assert grant.headers["x-ratelimit-remaining-requests"] == "3"


async def test_unlimited_principal_gets_no_headers() -> None:
    assert (await RateLimiter().acquire(principal(), "m", 10**9)).headers == {}


def test_duration_format() -> None:
    assert duration(0.02) == "20ms"
    assert duration(1.5) == "1.5s"
    assert duration(360) == "6m0s"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_two_gateways_share_one_budget(kind: str, tmp_path: Path, redis_url: str) -> None:
    # two limiters over one SQLite file (two workers of one machine), or one Redis (two machines)
    workers = [RateLimiter(make_store(kind, tmp_path, redis_url)) for _ in range(2)]
    who = principal(LimitsConfig(requests_per_minute=4, max_concurrent=3))
    grants = [await workers[i % 2].acquire(who, "m", 1) for i in range(3)]
    with pytest.raises(RateLimited, match="concurrent"):
        await workers[1].acquire(who, "m", 1)
    await grants[0].release(1)
    await workers[1].acquire(who, "m", 1)  # the 4th request of the minute, on either worker
    await grants[1].release(1)  # a free slot, but the minute's requests are spent
    with pytest.raises(RateLimited, match="requests per minute"):
        await workers[0].acquire(who, "m", 1)
