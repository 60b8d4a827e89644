"""Token-bucket limits per key and project: RPM, TPM reserve-and-settle, concurrency, headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.keys import Principal
from gateway.config import LimitsConfig
from gateway.errors import RateLimited
from gateway.limits.ratelimit import RateLimiter, duration
from gateway.limits.store import LimitStore, MemoryStore, SqliteStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LimitStore:
    return MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "limits.db")


def principal(key: LimitsConfig | None = None, project: LimitsConfig | None = None, key_id: str = "k1") -> Principal:
    return Principal(key_id, key_id, "team", None, key or LimitsConfig(), project or LimitsConfig())


def test_requests_per_minute(store: LimitStore) -> None:
    limiter, who = RateLimiter(store), principal(LimitsConfig(requests_per_minute=2))
    first = limiter.acquire(who, "m", 10)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    limiter.acquire(who, "m", 10)
    with pytest.raises(RateLimited) as err:
        limiter.acquire(who, "m", 10)
    assert err.value.kind.http_status == 429 and err.value.kind.code == "rate_limit_exceeded"
    assert 25 < (err.value.retry_after or 0) <= 30  # one request refills in 60 / 2 s
    assert err.value.headers["x-ratelimit-remaining-requests"] == "0"
    limiter.acquire(who, "other-model", 10)  # limits are per model


def test_tokens_are_reserved_then_settled(store: LimitStore) -> None:
    limiter, who = RateLimiter(store), principal(LimitsConfig(tokens_per_minute=1000))
    grant = limiter.acquire(who, "m", 800)  # prompt + max_tokens
    assert int(grant.headers["x-ratelimit-remaining-tokens"]) == 200
    with pytest.raises(RateLimited):
        limiter.acquire(who, "m", 300)
    grant.release(100)  # it really used 100: 700 come back
    grant.release(100)  # settling twice changes nothing
    after = limiter.acquire(who, "m", 300)
    assert 590 <= int(after.headers["x-ratelimit-remaining-tokens"]) <= 610
    with pytest.raises(RateLimited, match="tokens per minute"):
        limiter.acquire(who, "m", 5000)  # larger than the budget itself


def test_concurrency_and_shared_project_budget(store: LimitStore) -> None:
    limiter = RateLimiter(store)
    project = LimitsConfig(max_concurrent=2)
    a, b = principal(project=project, key_id="a"), principal(project=project, key_id="b")
    grant_a = limiter.acquire(a, "m", 1)
    limiter.acquire(b, "m", 1)
    with pytest.raises(RateLimited, match="concurrent"):
        limiter.acquire(a, "m", 1)  # the project's two slots are taken by two keys
    grant_a.release(1)
    limiter.acquire(b, "m", 1)


def test_a_rejection_consumes_nothing(store: LimitStore) -> None:
    limiter = RateLimiter(store)
    who = principal(LimitsConfig(requests_per_minute=5), LimitsConfig(max_concurrent=1))
    held = limiter.acquire(who, "m", 1)
    for _ in range(3):
        with pytest.raises(RateLimited):
            limiter.acquire(who, "m", 1)  # refused by the project scope...
    held.release(1)
    grant = limiter.acquire(who, "m", 1)  # ...without spending the key's requests
    assert grant.headers["x-ratelimit-remaining-requests"] == "3"


def test_unlimited_principal_gets_no_headers() -> None:
    assert RateLimiter().acquire(principal(), "m", 10**9).headers == {}


def test_duration_format() -> None:
    assert duration(0.02) == "20ms"
    assert duration(1.5) == "1.5s"
    assert duration(360) == "6m0s"


def test_two_workers_share_one_budget(tmp_path: Path) -> None:
    # two limiters over one SQLite file stand for two worker processes of one machine
    path = tmp_path / "limits.db"
    workers = [RateLimiter(SqliteStore(path)), RateLimiter(SqliteStore(path))]
    who = principal(LimitsConfig(requests_per_minute=4, max_concurrent=3))
    grants = [workers[i % 2].acquire(who, "m", 1) for i in range(3)]
    with pytest.raises(RateLimited, match="concurrent"):
        workers[1].acquire(who, "m", 1)
    grants[0].release(1)
    workers[1].acquire(who, "m", 1)  # the 4th request of the minute, on either worker
    grants[1].release(1)  # a free slot, but the minute's requests are spent
    with pytest.raises(RateLimited, match="requests per minute"):
        workers[0].acquire(who, "m", 1)
