"""Requests- and tokens-per-minute and concurrency limits, per key and per project, per model.

Token buckets refill continuously up to the per-minute limit. Tokens are reserved up front
(prompt + max_tokens for every choice) and settled to the real count when the request ends, so a
burst cannot overshoot a budget it only learns about afterwards. Every scope is checked before
any is charged, so a rejection consumes nothing.

The bucket state lives in a :class:`~gateway.limits.store.LimitStore`: in this process, in a
SQLite file every worker process of the machine shares (``--workers``), or in Redis for several
machines. Each acquire and release is one atomic read-modify-write of the scopes it touches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from gateway.auth.keys import Principal
from gateway.config import LimitsConfig
from gateway.errors import RateLimited
from gateway.limits.store import LimitStore, MemoryStore, ScopeState
from gateway.observability.metrics import RATE_LIMITED


def duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def _wait_for(level: float, capacity: float, amount: float) -> float:
    """Seconds until ``amount`` is available (0: now; inf: never, it exceeds the capacity)."""
    if amount > capacity:
        return math.inf
    return 0.0 if level >= amount else (amount - level) * 60.0 / capacity


@dataclass(frozen=True, slots=True)
class Scope:
    key: str  # "kind:owner:model"
    kind: str  # "key" or "project"
    limits: LimitsConfig

    def refill(self, state: ScopeState | None, now: float) -> ScopeState:
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        if state is None:
            return ScopeState(float(rpm or 0), float(tpm or 0), now, 0)
        elapsed = max(0.0, now - state.updated)
        if rpm:
            state.requests = min(rpm, state.requests + elapsed * rpm / 60.0)
        if tpm:
            state.tokens = min(tpm, state.tokens + elapsed * tpm / 60.0)
        state.updated = now
        return state

    def headers(self, state: ScopeState) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, capacity, level in (
            ("requests", self.limits.requests_per_minute, state.requests),
            ("tokens", self.limits.tokens_per_minute, state.tokens),
        ):
            if capacity:
                headers[f"x-ratelimit-limit-{name}"] = str(capacity)
                headers[f"x-ratelimit-remaining-{name}"] = str(max(0, int(level)))
                headers[f"x-ratelimit-reset-{name}"] = duration((capacity - level) * 60.0 / capacity)
        return headers


@dataclass(slots=True)
class Grant:
    """An admitted request: its headers now, its settlement when it ends."""

    store: LimitStore
    scopes: list[Scope]
    reserved: int
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False

    async def release(self, used_tokens: int) -> None:
        if self.released or not self.scopes:
            return
        self.released = True
        now = time.time()

        def settle(states: dict[str, ScopeState]) -> None:
            for scope in self.scopes:
                state = scope.refill(states.get(scope.key), now)
                state.in_flight = max(0, state.in_flight - 1)
                if scope.limits.tokens_per_minute:
                    # give back what was reserved and not used (or charge the excess)
                    state.tokens = min(scope.limits.tokens_per_minute, state.tokens + self.reserved - used_tokens)
                states[scope.key] = state

        await self.store.transact([s.key for s in self.scopes], settle)


class RateLimiter:
    def __init__(self, store: LimitStore | None = None) -> None:
        self._store = store or MemoryStore()

    @staticmethod
    def _scopes(principal: Principal, model: str) -> list[Scope]:
        scopes = []
        for kind, owner, limits in (
            ("key", principal.key_id, principal.key_limits),
            ("project", principal.project, principal.project_limits),
        ):
            if limits.requests_per_minute or limits.tokens_per_minute or limits.max_concurrent:
                scopes.append(Scope(f"{kind}:{owner}:{model}", kind, limits))
        return scopes

    async def acquire(self, principal: Principal, model: str, tokens: int) -> Grant:
        """Admit a request that may use ``tokens`` (prompt + max_tokens), or raise 429."""
        scopes = self._scopes(principal, model)
        if not scopes:
            return Grant(self._store, [], tokens)
        now = time.time()

        def admit(states: dict[str, ScopeState]) -> dict[str, str]:
            refilled = [(scope, scope.refill(states.get(scope.key), now)) for scope in scopes]
            for scope, state in refilled:
                _check(scope, state, tokens, principal, model)  # raising writes nothing
            for scope, state in refilled:
                state.in_flight += 1
                if scope.limits.requests_per_minute:
                    state.requests -= 1
                if scope.limits.tokens_per_minute:
                    state.tokens -= tokens
                states[scope.key] = state
            return scopes[0].headers(refilled[0][1])

        headers = await self._store.transact([s.key for s in scopes], admit)
        return Grant(self._store, scopes, tokens, headers)

    async def close(self) -> None:
        await self._store.close()


def _check(scope: Scope, state: ScopeState, tokens: int, principal: Principal, model: str) -> None:
    limits = scope.limits
    if limits.max_concurrent is not None and state.in_flight >= limits.max_concurrent:
        _reject(scope, state, "concurrency", principal, model, 1.0, f"{limits.max_concurrent} concurrent requests")
    if limits.requests_per_minute and (wait := _wait_for(state.requests, limits.requests_per_minute, 1)) > 0:
        _reject(scope, state, "requests", principal, model, wait, f"{limits.requests_per_minute} requests per minute")
    if limits.tokens_per_minute and (wait := _wait_for(state.tokens, limits.tokens_per_minute, tokens)) > 0:
        wait = 60.0 if math.isinf(wait) else wait
        _reject(scope, state, "tokens", principal, model, wait, f"{limits.tokens_per_minute} tokens per minute")


def _reject(
    scope: Scope, state: ScopeState, limit: str, principal: Principal, model: str, wait: float, what: str
) -> None:
    RATE_LIMITED.labels(model, principal.project, limit).inc()
    owner = f"project {principal.project}" if scope.kind == "project" else f"key {principal.key_name}"
    raise RateLimited(
        f"Rate limit reached for {model} on {owner}: {what}. Please try again in {duration(wait)}.",
        retry_after=wait,
        headers=scope.headers(state),
    )
