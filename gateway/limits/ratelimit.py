"""Requests- and tokens-per-minute and concurrency limits, per key and per project, per model.

Token buckets refill continuously up to the per-minute limit. Tokens are reserved up front
(prompt + max_tokens for every choice) and settled to the real count when the request ends, so a
burst cannot overshoot a budget it only learns about afterwards. State is in this process; every
scope is checked before any is charged, so a rejection consumes nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from gateway.auth.keys import Principal
from gateway.config import LimitsConfig
from gateway.errors import RateLimited
from gateway.observability.metrics import RATE_LIMITED


def duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass(slots=True)
class Bucket:
    capacity: float  # per minute
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0: now; inf: never, it exceeds the capacity)."""
        if amount > self.capacity:
            return math.inf
        return 0.0 if self.level >= amount else (amount - self.level) * 60.0 / self.capacity

    def reset_in(self) -> float:
        return (self.capacity - self.level) * 60.0 / self.capacity


@dataclass(slots=True)
class Scope:
    limits: LimitsConfig
    requests: Bucket | None
    tokens: Bucket | None
    in_flight: int = 0


@dataclass(slots=True)
class Grant:
    """An admitted request: its headers now, its settlement when it ends."""

    scopes: list[Scope]
    reserved: int
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False

    def release(self, used_tokens: int) -> None:
        if self.released:
            return
        self.released = True
        now = time.monotonic()
        for scope in self.scopes:
            scope.in_flight -= 1
            if scope.tokens is not None:
                scope.tokens.refill(now)
                # give back what was reserved and not used (or charge the excess)
                scope.tokens.level = min(scope.tokens.capacity, scope.tokens.level + self.reserved - used_tokens)


class RateLimiter:
    def __init__(self) -> None:
        self._scopes: dict[tuple[str, str, str], Scope] = {}

    def _scope(self, kind: str, owner: str, model: str, limits: LimitsConfig, now: float) -> Scope | None:
        if limits.requests_per_minute is None and limits.tokens_per_minute is None and limits.max_concurrent is None:
            return None
        key = (kind, owner, model)
        scope = self._scopes.get(key)
        if scope is None:
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            scope = self._scopes[key] = Scope(
                limits,
                Bucket(rpm, rpm, now) if rpm else None,
                Bucket(tpm, tpm, now) if tpm else None,
            )
        return scope

    def acquire(self, principal: Principal, model: str, tokens: int) -> Grant:
        """Admit a request that may use ``tokens`` (prompt + max_tokens), or raise 429."""
        now = time.monotonic()
        scopes = [
            s
            for s in (
                self._scope("key", principal.key_id, model, principal.key_limits, now),
                self._scope("project", principal.project, model, principal.project_limits, now),
            )
            if s is not None
        ]
        for kind, scope in zip(("key", "project"), scopes, strict=False):
            for bucket in (scope.requests, scope.tokens):
                if bucket is not None:
                    bucket.refill(now)
            self._check(kind, scope, tokens, principal, model)
        for scope in scopes:
            scope.in_flight += 1
            if scope.requests is not None:
                scope.requests.level -= 1
            if scope.tokens is not None:
                scope.tokens.level -= tokens
        return Grant(scopes, tokens, _headers(scopes[0]) if scopes else {})

    @staticmethod
    def _check(kind: str, scope: Scope, tokens: int, principal: Principal, model: str) -> None:
        limits = scope.limits
        if limits.max_concurrent is not None and scope.in_flight >= limits.max_concurrent:
            _reject(kind, "concurrency", principal, model, 1.0, f"{limits.max_concurrent} concurrent requests", scope)
        if scope.requests is not None and (wait := scope.requests.wait_for(1)) > 0:
            _reject(
                kind, "requests", principal, model, wait, f"{limits.requests_per_minute} requests per minute", scope
            )
        if scope.tokens is not None and (wait := scope.tokens.wait_for(tokens)) > 0:
            if math.isinf(wait):
                wait = 60.0
            _reject(kind, "tokens", principal, model, wait, f"{limits.tokens_per_minute} tokens per minute", scope)


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, bucket in (("requests", scope.requests), ("tokens", scope.tokens)):
        if bucket is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(int(bucket.capacity))
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(bucket.level)))
            headers[f"x-ratelimit-reset-{name}"] = duration(bucket.reset_in())
    return headers


def _reject(kind: str, limit: str, principal: Principal, model: str, wait: float, what: str, scope: Scope) -> None:
    RATE_LIMITED.labels(model, principal.project, limit).inc()
    owner = f"project {principal.project}" if kind == "project" else f"key {principal.key_name}"
    raise RateLimited(
        f"Rate limit reached for {model} on {owner}: {what}. Please try again in {duration(wait)}.",
        retry_after=wait,
        headers=_headers(scope),
    )
