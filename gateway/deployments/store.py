"""Where deployments are kept: :class:`DeploymentStore`, in a SQLite file or in Redis.

- :class:`SqliteDeploymentStore`: one file that every gateway process of a machine shares (``--workers``):
  WAL, a busy timeout, each change one ``BEGIN IMMEDIATE`` transaction. The work runs in a thread, so that
  waiting on another process's lock never stalls the event loop.
- :class:`~gateway.deployments.store_redis.RedisDeploymentStore`: every gateway of every machine.

Both keep a name and a model id to one deployment (:class:`~gateway.errors.Conflict`), compare-and-set on
``revision`` (:class:`~gateway.errors.RevisionMismatch`), and report changes made by any process through
:meth:`DeploymentStore.changes`. The rules they share are in :mod:`gateway.deployments.store_rules`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
from redis.exceptions import RedisError

from gateway.deployments.records import Deployment
from gateway.deployments.store_redis import RedisDeploymentStore
from gateway.deployments.store_rules import (
    ORDERS,
    OrderBy,
    check_page,
    check_revision,
    first_revision,
    id_taken,
    model_id_taken,
    name_taken,
    next_revision,
)
from gateway.errors import Conflict, StoreUnavailable

__all__ = ["ORDERS", "DeploymentStore", "OrderBy", "RedisDeploymentStore", "SqliteDeploymentStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Deployments = list[Deployment]  # (the stores' method `list` hides the builtin in their class bodies)

BUSY_TIMEOUT_S = 30.0  # how long a change waits for another process's write lock
POLL_INTERVAL_S = 1.0  # how often changes() looks for other processes' changes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    model_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deployments_by_created ON deployments (created_at, id);
"""
_COLUMNS = "id, name, model_id, status, tags, created_at, updated_at, revision, record"
_ORDER_SQL: dict[OrderBy, str] = {
    "created_at_asc": "created_at ASC, id ASC",
    "created_at_desc": "created_at DESC, id DESC",
    "name_asc": "name ASC",
    "name_desc": "name DESC",
}


class DeploymentStore(Protocol):
    """Deployments, durable and shared by the gateway's processes (and, in Redis, its replicas)."""

    async def create(self, d: Deployment) -> Deployment:
        """Store ``d`` at revision 1; its id, name or model id taken: Conflict."""
        ...

    async def get(self, deployment_id: str) -> Deployment | None: ...

    async def get_by_model_id(self, model_id: str) -> Deployment | None: ...

    async def list(
        self,
        name: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        order_by: OrderBy = "created_at_asc",
        page: int = 1,
        per_page: int = 50,
    ) -> tuple[Deployments, int]:
        """One page (from 1) of the deployments that pass the filters, and how many pass them in all.

        ``name``: a substring of the name (case counts); ``tag``: one of the tags, exactly; ``status``: the
        status. An unknown order or a page or page size under 1: ValueError.
        """
        ...

    async def all(self) -> Deployments:
        """Every deployment, oldest first."""
        ...

    async def update(
        self, deployment_id: str, expected_revision: int | None = None, **changes: object
    ) -> Deployment | None:
        """The deployment with ``changes``, at the next revision; None when there is none.

        ``expected_revision`` given: only if that is the current revision (RevisionMismatch, a Conflict,
        when not). A name or model id another deployment has: Conflict. A field the record lacks, a value
        it refuses, or id, revision, created_at or updated_at: ValueError.
        """
        ...

    async def delete(self, deployment_id: str) -> bool:
        """Remove it; False when there was none."""
        ...

    def changes(self) -> AsyncIterator[str]:
        """The ids of deployments created, changed or deleted by any process from the first ``__anext__`` on,
        within seconds; endless. An id may come more than once, or when nothing changed (after a lost
        connection, every current id); a caller that must not miss a deletion also reads :meth:`all` now and
        then. (Implemented as ``async def changes(self) -> AsyncIterator[str]`` generators.)"""
        ...

    async def close(self) -> None: ...


def _record(raw: str | bytes) -> Deployment:
    return Deployment.model_validate_json(raw)


def _row(d: Deployment) -> tuple[object, ...]:
    tags = orjson.dumps(d.tags).decode()
    return (d.id, d.name, d.model_id, d.status, tags, d.created_at, d.updated_at, d.revision, d.model_dump_json())


class SqliteDeploymentStore:
    """Deployments in one SQLite file, shared by the processes of one machine."""

    def __init__(self, path: Path, poll_interval: float = POLL_INTERVAL_S) -> None:
        """Open (or create) the file, and its directory, now."""
        self.path = path
        self._poll_interval = poll_interval
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._writes = 0  # this connection's own changes (PRAGMA data_version counts only the others')
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")  # kept in the file: every later connection is WAL too
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash of the process loses nothing committed
            db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        except BaseException:
            db.close()
            raise
        self._db = db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._db)

        return await asyncio.to_thread(locked)

    @contextlib.contextmanager
    def _write(self, db: sqlite3.Connection) -> Iterator[None]:
        """One ``BEGIN IMMEDIATE`` transaction: committed, or rolled back when the block raises."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._writes += 1

    async def create(self, d: Deployment) -> Deployment:
        record = first_revision(d)

        def insert(db: sqlite3.Connection) -> None:
            with self._write(db):
                try:
                    db.execute(f"INSERT INTO deployments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(record))
                except sqlite3.IntegrityError as exc:
                    raise _conflict(db, record, exc) from None

        await self._run(insert)
        return record

    async def get(self, deployment_id: str) -> Deployment | None:
        return await self._one("id", deployment_id)

    async def get_by_model_id(self, model_id: str) -> Deployment | None:
        return await self._one("model_id", model_id)

    async def _one(self, column: str, value: str) -> Deployment | None:
        def select(db: sqlite3.Connection) -> Deployment | None:
            row = db.execute(f"SELECT record FROM deployments WHERE {column} = ?", (value,)).fetchone()
            return None if row is None else _record(row[0])

        return await self._run(select)

    async def list(
        self,
        name: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        order_by: OrderBy = "created_at_asc",
        page: int = 1,
        per_page: int = 50,
    ) -> tuple[Deployments, int]:
        check_page(order_by, page, per_page)
        where: list[str] = []
        args: list[object] = []
        if name:
            where.append("instr(name, ?) > 0")
            args.append(name)
        if tag:
            where.append("EXISTS (SELECT 1 FROM json_each(deployments.tags) WHERE json_each.value = ?)")
            args.append(tag)
        if status:
            where.append("status = ?")
            args.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def select(db: sqlite3.Connection) -> tuple[Deployments, int]:
            db.execute("BEGIN")  # one snapshot for the count and the page
            try:
                total = db.execute(f"SELECT count(*) FROM deployments {clause}", args).fetchone()[0]
                rows = db.execute(
                    f"SELECT record FROM deployments {clause} ORDER BY {_ORDER_SQL[order_by]} LIMIT ? OFFSET ?",
                    (*args, per_page, (page - 1) * per_page),
                ).fetchall()
            finally:
                db.execute("COMMIT")
            return [_record(row[0]) for row in rows], int(total)

        return await self._run(select)

    async def all(self) -> Deployments:
        def select(db: sqlite3.Connection) -> Deployments:
            rows = db.execute("SELECT record FROM deployments ORDER BY created_at, id").fetchall()
            return [_record(row[0]) for row in rows]

        return await self._run(select)

    async def update(
        self, deployment_id: str, expected_revision: int | None = None, **changes: object
    ) -> Deployment | None:
        def write(db: sqlite3.Connection) -> Deployment | None:
            with self._write(db):
                row = db.execute("SELECT record FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
                if row is None:
                    return None
                current = _record(row[0])
                check_revision(current, expected_revision)
                record = next_revision(current, changes)
                try:
                    db.execute(
                        "UPDATE deployments SET name = ?, model_id = ?, status = ?, tags = ?, created_at = ?,"
                        " updated_at = ?, revision = ?, record = ? WHERE id = ?",
                        (*_row(record)[1:], deployment_id),
                    )
                except sqlite3.IntegrityError as exc:
                    raise _conflict(db, record, exc) from None
                return record

        return await self._run(write)

    async def delete(self, deployment_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            with self._write(db):
                return db.execute("DELETE FROM deployments WHERE id = ?", (deployment_id,)).rowcount > 0

        return await self._run(write)

    async def changes(self) -> AsyncIterator[str]:
        """Every ``poll_interval`` seconds one cheap query (``PRAGMA data_version``, and this connection's own
        count of changes); when either moved, the ids and revisions of every deployment, compared with the
        last look's: what was created, deleted or changed since."""

        def marker(db: sqlite3.Connection) -> tuple[int, int]:
            return int(db.execute("PRAGMA data_version").fetchone()[0]), self._writes

        def revisions(db: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            rows = db.execute("SELECT id, revision, updated_at FROM deployments").fetchall()
            return {row[0]: (row[1], row[2]) for row in rows}

        # the marker first, then the rows: a change between the two shows again in the next marker
        seen_marker = await self._run(marker)
        seen = await self._run(revisions)
        while True:
            await asyncio.sleep(self._poll_interval)
            now_marker = await self._run(marker)
            if now_marker == seen_marker:
                continue
            current = await self._run(revisions)
            seen_marker = now_marker
            changed = [i for i, rev in current.items() if seen.get(i) != rev] + [i for i in seen if i not in current]
            seen = current
            for deployment_id in changed:
                yield deployment_id

    async def close(self) -> None:
        def close(db: sqlite3.Connection) -> None:
            db.close()

        await self._run(close)


def _conflict(db: sqlite3.Connection, record: Deployment, exc: sqlite3.IntegrityError) -> Conflict:
    """Which of a record's unique values another deployment holds (SQLite names the column)."""
    text = str(exc)
    if "deployments.name" in text:
        return name_taken(record.name)
    if "deployments.model_id" in text:
        row = db.execute("SELECT id FROM deployments WHERE model_id = ?", (record.model_id,)).fetchone()
        return model_id_taken(record.model_id, row[0] if row else "another")
    if "deployments.id" in text:
        return id_taken(record.id)
    raise exc


_FAILURES = (sqlite3.Error, OSError, RedisError)  # the store itself unreachable or broken (not an answer)


async def guarded(call: Awaitable[T]) -> T:
    """``call``'s answer; a failure of the store itself as the gateway's ``StoreUnavailable`` (503)."""
    try:
        return await call
    except _FAILURES as exc:
        log.warning("deployment store: %s: %s", type(exc).__name__, exc)
        raise StoreUnavailable(f"The deployment store is unavailable ({type(exc).__name__})") from None


class GuardedStore:
    """A store whose failures reach callers as ``StoreUnavailable``, translated here where they enter
    (not per route); conflicts and the store's other answers pass as they are."""

    def __init__(self, inner: DeploymentStore) -> None:
        self._inner = inner

    async def create(self, d: Deployment) -> Deployment:
        return await guarded(self._inner.create(d))

    async def get(self, deployment_id: str) -> Deployment | None:
        return await guarded(self._inner.get(deployment_id))

    async def get_by_model_id(self, model_id: str) -> Deployment | None:
        return await guarded(self._inner.get_by_model_id(model_id))

    async def list(
        self,
        name: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        order_by: OrderBy = "created_at_asc",
        page: int = 1,
        per_page: int = 50,
    ) -> tuple[Deployments, int]:
        return await guarded(self._inner.list(name, tag, status, order_by, page, per_page))

    async def all(self) -> Deployments:
        return await guarded(self._inner.all())

    async def update(
        self, deployment_id: str, expected_revision: int | None = None, **changes: object
    ) -> Deployment | None:
        return await guarded(self._inner.update(deployment_id, expected_revision, **changes))

    async def delete(self, deployment_id: str) -> bool:
        return await guarded(self._inner.delete(deployment_id))

    def changes(self) -> AsyncIterator[str]:
        return self._inner.changes()  # its reader fails on its own; the manager's watch loop retries

    async def close(self) -> None:
        await self._inner.close()
