"""The metadata of files and batches, and each batch's per-line progress: one SQLite file.

SQLite in WAL mode, shared by every gateway process of the machine (``--workers``); each change is
one short ``BEGIN IMMEDIATE`` transaction, run on the event loop as the limit store's are (tens of
microseconds: a commit writes the WAL, ``synchronous=NORMAL`` syncs it only at checkpoints, so a
process that dies loses nothing, a power cut may lose the last commits). The file is created on
first use: a gateway whose clients never upload anything writes nothing to ``data_dir``.

A line's progress is ``done`` + where its result sits in the batch's results log (offset, length):
recorded in the same transaction that counts it in the batch's ``request_counts``, at most once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.batches.records import (
    ACTIVE,
    CANCELLABLE,
    STATUS_TIMES,
    BatchRecord,
    FileRecord,
    LineSpan,
    LineState,
    NewLine,
)

__all__ = ["STATUS_TIMES", "Catalog"]  # STATUS_TIMES: also read from here (gateway/api/openapi_responses.py)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    project TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    project TEXT NOT NULL,
    key_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    model TEXT,
    status TEXT NOT NULL,
    errors TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_expires REAL
);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    custom_id TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    ok INTEGER NOT NULL DEFAULT 0,
    result_offset INTEGER,
    result_length INTEGER,
    PRIMARY KEY (batch_id, idx)
) WITHOUT ROWID;
"""


_BATCH_COLUMNS = (
    "id, project, key_id, endpoint, input_file_id, completion_window, status, created_at, expires_at, metadata,"
    " model, errors, output_file_id, error_file_id, total, completed, failed, input_tokens, output_tokens, "
    + ", ".join(STATUS_TIMES.values())
)


def _batch(row: sqlite3.Row) -> BatchRecord:
    return BatchRecord(
        id=row["id"],
        project=row["project"],
        key_id=row["key_id"],
        endpoint=row["endpoint"],
        input_file_id=row["input_file_id"],
        completion_window=row["completion_window"],
        status=row["status"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        metadata=orjson.loads(row["metadata"]) if row["metadata"] else None,
        model=row["model"],
        errors=orjson.loads(row["errors"]) if row["errors"] else None,
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        times={status: row[col] for status, col in STATUS_TIMES.items() if row[col] is not None},
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
    )


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(row["id"], row["project"], row["filename"], row["purpose"], row["bytes"], row["created_at"])


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def exists(self) -> bool:
        return self._conn is not None or self.path.exists()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # files

    def add_file(self, record: FileRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO files (id, project, filename, purpose, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.project, record.filename, record.purpose, record.bytes, record.created_at),
            )

    def file(self, file_id: str, project: str) -> FileRecord | None:
        row = self._db.execute("SELECT * FROM files WHERE id = ? AND project = ?", (file_id, project)).fetchone()
        return None if row is None else _file(row)

    def _seq(self, table: str, object_id: str, project: str) -> int | None:
        row = self._db.execute(f"SELECT seq FROM {table} WHERE id = ? AND project = ?", (object_id, project)).fetchone()
        return None if row is None else int(row["seq"])

    def file_seq(self, file_id: str, project: str) -> int | None:
        return self._seq("files", file_id, project)

    def files(
        self, project: str, purpose: str | None, after_seq: int | None, limit: int, newest_first: bool
    ) -> list[FileRecord]:
        """Up to ``limit`` files of the project in upload order (or its reverse), after the cursor."""
        where: list[str] = ["project = ?"]
        args: list[object] = [project]
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        if after_seq is not None:
            where.append("seq < ?" if newest_first else "seq > ?")
            args.append(after_seq)
        order = "DESC" if newest_first else "ASC"
        rows = self._db.execute(
            f"SELECT * FROM files WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?", (*args, limit)
        ).fetchall()
        return [_file(row) for row in rows]

    def delete_file(self, file_id: str, project: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM files WHERE id = ? AND project = ?", (file_id, project)).rowcount == 1

    # batches

    def add_batch(self, batch: BatchRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO batches (id, project, key_id, endpoint, input_file_id, completion_window, status,"
                " created_at, expires_at, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch.id,
                    batch.project,
                    batch.key_id,
                    batch.endpoint,
                    batch.input_file_id,
                    batch.completion_window,
                    batch.status,
                    batch.created_at,
                    batch.expires_at,
                    None if batch.metadata is None else orjson.dumps(batch.metadata).decode(),
                ),
            )

    def batch(self, batch_id: str, project: str | None = None) -> BatchRecord | None:
        if project is None:
            row = self._db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()
        else:
            row = self._db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ? AND project = ?", (batch_id, project)
            ).fetchone()
        return None if row is None else _batch(row)

    def batch_seq(self, batch_id: str, project: str) -> int | None:
        return self._seq("batches", batch_id, project)

    def batches(self, project: str, after_seq: int | None, limit: int) -> list[BatchRecord]:
        """Up to ``limit`` batches of the project, newest first, after the cursor."""
        rows = self._db.execute(
            f"SELECT {_BATCH_COLUMNS} FROM batches WHERE project = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (project, after_seq if after_seq is not None else 2**62, limit),
        ).fetchall()
        return [_batch(row) for row in rows]

    def transition(self, batch_id: str, before: Sequence[str], after: str, now: int, **values: Any) -> bool:
        """Move the batch from one of ``before`` to ``after`` (its time stamped), setting ``values``;
        False when its status was none of ``before``."""
        values = dict(values)
        if after in STATUS_TIMES:
            values[STATUS_TIMES[after]] = now
        sets = ", ".join(["status = ?", *(f"{name} = ?" for name in values)])
        marks = ",".join("?" * len(before))
        with self._tx() as db:
            cursor = db.execute(
                f"UPDATE batches SET {sets} WHERE id = ? AND status IN ({marks})",
                (after, *values.values(), batch_id, *before),
            )
            return cursor.rowcount == 1

    def cancel(self, batch_id: str, project: str, now: int) -> bool:
        with self._tx() as db:
            marks = ",".join("?" * len(CANCELLABLE))
            cursor = db.execute(
                f"UPDATE batches SET status = 'cancelling', cancelling_at = ? WHERE id = ? AND project = ?"
                f" AND status IN ({marks})",
                (now, batch_id, project, *CANCELLABLE),
            )
            return cursor.rowcount == 1

    def status(self, batch_id: str) -> str | None:
        row = self._db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return None if row is None else str(row["status"])

    def candidates(self, now: float) -> list[str]:
        """Batches with work left whose lease is free (or lapsed), oldest first."""
        marks = ",".join("?" * len(ACTIVE))
        rows = self._db.execute(
            f"SELECT id FROM batches WHERE status IN ({marks}) AND (owner IS NULL OR lease_expires < ?) ORDER BY seq",
            (*ACTIVE, now),
        ).fetchall()
        return [str(row["id"]) for row in rows]

    # the row lease (gateway.batches.lease.SqliteLease)

    def lease_acquire(self, batch_id: str, owner: str, until: float, now: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE batches SET owner = ?, lease_expires = ? WHERE id = ?"
                " AND (owner IS NULL OR owner = ? OR lease_expires < ?)",
                (owner, until, batch_id, owner, now),
            )
            return cursor.rowcount == 1

    def lease_renew(self, batch_id: str, owner: str, until: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE batches SET lease_expires = ? WHERE id = ? AND owner = ?", (until, batch_id, owner)
            )
            return cursor.rowcount == 1

    def lease_release(self, batch_id: str, owner: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET owner = NULL, lease_expires = NULL WHERE id = ? AND owner = ?", (batch_id, owner)
            )

    # lines

    def start_lines(self, batch_id: str, lines: Sequence[NewLine], model: str | None, now: int) -> bool:
        """Validation's outcome: every line recorded (invalid ones done, failed) and the batch
        ``in_progress``, in one transaction; False when the batch left ``validating`` meanwhile."""
        failed = sum(1 for line in lines if line.result is not None)
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE batches SET status = 'in_progress', in_progress_at = ?, total = ?, failed = ?, model = ?"
                " WHERE id = ? AND status = 'validating'",
                (now, len(lines), failed, model, batch_id),
            )
            if cursor.rowcount != 1:
                return False
            db.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
            db.executemany(
                "INSERT INTO batch_lines (batch_id, idx, offset, length, custom_id, done, ok, result_offset,"
                " result_length) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                [
                    (
                        batch_id,
                        line.span.idx,
                        line.span.offset,
                        line.span.length,
                        line.span.custom_id,
                        line.result is not None,
                        *(line.result or (None, None)),
                    )
                    for line in lines
                ],
            )
            return True

    def pending_lines(self, batch_id: str) -> list[LineSpan]:
        rows = self._db.execute(
            "SELECT idx, offset, length, custom_id FROM batch_lines WHERE batch_id = ? AND done = 0 ORDER BY idx",
            (batch_id,),
        ).fetchall()
        return [LineSpan(row["idx"], row["offset"], row["length"], row["custom_id"]) for row in rows]

    def record_line(
        self,
        batch_id: str,
        idx: int,
        ok: bool,
        result: tuple[int, int],
        tokens: tuple[int, int] = (0, 0),
        owner: str | None = None,
    ) -> bool:
        """The line done, where its result is, and the batch's counts and tokens, at most once; with
        ``owner`` only while that owner holds the batch's row lease. False when not recorded."""
        with self._tx() as db:
            if owner is not None:
                held = db.execute("SELECT 1 FROM batches WHERE id = ? AND owner = ?", (batch_id, owner)).fetchone()
                if held is None:
                    return False
            cursor = db.execute(
                "UPDATE batch_lines SET done = 1, ok = ?, result_offset = ?, result_length = ?"
                " WHERE batch_id = ? AND idx = ? AND done = 0",
                (ok, *result, batch_id, idx),
            )
            if cursor.rowcount != 1:
                return False
            db.execute(
                "UPDATE batches SET completed = completed + ?, failed = failed + ?, input_tokens = input_tokens + ?,"
                " output_tokens = output_tokens + ? WHERE id = ?",
                (int(ok), int(not ok), *tokens, batch_id),
            )
            return True

    def lines(self, batch_id: str, after_idx: int, limit: int) -> list[LineState]:
        """Lines in input order from ``after_idx`` (exclusive), for assembling the output files."""
        rows = self._db.execute(
            "SELECT idx, custom_id, done, ok, result_offset, result_length FROM batch_lines"
            " WHERE batch_id = ? AND idx > ? ORDER BY idx LIMIT ?",
            (batch_id, after_idx, limit),
        ).fetchall()
        return [LineState(row["idx"], row["custom_id"], bool(row["done"]), bool(row["ok"]), *row[4:6]) for row in rows]

    def finish(
        self,
        batch_id: str,
        before: Sequence[str],
        status: str,
        now: int,
        files: Sequence[FileRecord],
        output_file_id: str | None,
        error_file_id: str | None,
    ) -> bool:
        """The batch ended: its output files recorded, its status final, its line rows dropped, in
        one transaction; False when its status was none of ``before``."""
        marks = ",".join("?" * len(before))
        with self._tx() as db:
            cursor = db.execute(
                f"UPDATE batches SET status = ?, {STATUS_TIMES[status]} = ?, output_file_id = ?, error_file_id = ?,"
                f" owner = NULL, lease_expires = NULL WHERE id = ? AND status IN ({marks})",
                (status, now, output_file_id, error_file_id, batch_id, *before),
            )
            if cursor.rowcount != 1:
                return False
            db.executemany(
                "INSERT OR REPLACE INTO files (id, project, filename, purpose, bytes, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(f.id, f.project, f.filename, f.purpose, f.bytes, f.created_at) for f in files],
            )
            db.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
            return True
