"""Where limit state lives: this process, a SQLite file the machine's workers share, or Redis.

``transact(keys, fn)`` runs ``fn`` on the scopes' states (absent keys are missing from the dict)
as one atomic read-modify-write: what ``fn`` leaves in the dict is written back; if ``fn`` raises,
nothing is written and the exception propagates. One transaction per request, never per token.

- :class:`MemoryStore`: one process (a single worker).
- :class:`SqliteStore`: every worker of one machine (``BEGIN IMMEDIATE`` serializes them; WAL).
- :class:`RedisStore`: every gateway of every machine (``WATCH``/``MULTI``, retried on conflict).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class ScopeState:
    requests: float  # requests-per-minute bucket level
    tokens: float  # tokens-per-minute bucket level
    updated: float  # time.time() of the last refill
    in_flight: int

    def pack(self) -> str:
        return f"{self.requests!r} {self.tokens!r} {self.updated!r} {self.in_flight}"

    @classmethod
    def unpack(cls, raw: str | bytes) -> ScopeState:
        requests, tokens, updated, in_flight = (raw.decode() if isinstance(raw, bytes) else raw).split()
        return cls(float(requests), float(tokens), float(updated), int(in_flight))


Mutation = Callable[[dict[str, ScopeState]], T]


class LimitStore(Protocol):
    async def transact(self, keys: list[str], fn: Mutation[T]) -> T: ...

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._states: dict[str, ScopeState] = {}

    async def transact(self, keys: list[str], fn: Mutation[T]) -> T:
        # copies, so that a raising fn leaves the state as it was; no await inside: atomic
        view = {k: dataclasses.replace(self._states[k]) for k in keys if k in self._states}
        result = fn(view)
        self._states.update(view)
        return result

    async def close(self) -> None:
        pass


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # limit state need not survive a power cut
        self._db.execute("CREATE TABLE IF NOT EXISTS scopes (key TEXT PRIMARY KEY, state TEXT NOT NULL)")

    async def transact(self, keys: list[str], fn: Mutation[T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            marks = ",".join("?" * len(keys))
            rows = db.execute(f"SELECT key, state FROM scopes WHERE key IN ({marks})", keys).fetchall()
            view = {key: ScopeState.unpack(state) for key, state in rows}
            result = fn(view)
            db.executemany(
                "INSERT INTO scopes VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET state=excluded.state",
                [(k, s.pack()) for k, s in view.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    async def close(self) -> None:
        self._db.close()


class RedisStore:
    """Limit state shared by gateways on several machines. Idle scopes expire after ``ttl``."""

    def __init__(self, url: str, ttl: int = 3600, prefix: str = "gateway:limits:") -> None:
        import redis.asyncio

        self._redis: Any = redis.asyncio.from_url(url)
        self._ttl = ttl
        self._prefix = prefix

    async def transact(self, keys: list[str], fn: Mutation[T]) -> T:
        from redis.exceptions import WatchError

        names = [self._prefix + k for k in keys]
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*names)
                    raw = await pipe.mget(names)
                    view = {k: ScopeState.unpack(v) for k, v in zip(keys, raw, strict=True) if v is not None}
                    result = fn(view)
                    pipe.multi()
                    for key, state in view.items():
                        pipe.set(self._prefix + key, state.pack(), ex=self._ttl)
                    await pipe.execute()
                    return result
                except WatchError:
                    continue  # another gateway changed a scope meanwhile: read again

    async def close(self) -> None:
        await self._redis.aclose()
