"""Where limit state lives: this process (one worker), or a SQLite file shared by the workers.

``locked(keys)`` yields the scopes' states for one atomic read-modify-write: whatever the block
leaves in the dict is written back when it exits normally; an exception writes nothing.
SQLite's ``BEGIN IMMEDIATE`` takes the database's write lock, so concurrent workers serialize on
it (WAL mode; one small transaction per request, never per token).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(slots=True)
class ScopeState:
    requests: float  # requests-per-minute bucket level
    tokens: float  # tokens-per-minute bucket level
    updated: float  # time.time() of the last refill
    in_flight: int


class LimitStore(Protocol):
    def locked(self, keys: list[str]) -> contextlib.AbstractContextManager[dict[str, ScopeState]]: ...


class MemoryStore:
    """One process's state (the default, and enough for a single worker)."""

    def __init__(self) -> None:
        self._states: dict[str, ScopeState] = {}

    @contextlib.contextmanager
    def locked(self, keys: list[str]) -> Iterator[dict[str, ScopeState]]:
        view = {k: self._states[k] for k in keys if k in self._states}
        yield view  # the event loop is single-threaded: nothing interleaves a synchronous block
        self._states.update(view)


class SqliteStore:
    """State shared by every worker process on the machine."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # limit state need not survive a power cut
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scopes "
            "(key TEXT PRIMARY KEY, requests REAL, tokens REAL, updated REAL, in_flight INTEGER)"
        )

    @contextlib.contextmanager
    def locked(self, keys: list[str]) -> Iterator[dict[str, ScopeState]]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            marks = ",".join("?" * len(keys))
            rows = db.execute(
                f"SELECT key, requests, tokens, updated, in_flight FROM scopes WHERE key IN ({marks})", keys
            ).fetchall()
            view = {row[0]: ScopeState(row[1], row[2], row[3], row[4]) for row in rows}
            yield view
            db.executemany(
                "INSERT INTO scopes VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "requests=excluded.requests, tokens=excluded.tokens, updated=excluded.updated, "
                "in_flight=excluded.in_flight",
                [(k, s.requests, s.tokens, s.updated, s.in_flight) for k, s in view.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
