"""The ledger: records appended in memory on the request path, written to SQLite by a thread of its own.

:meth:`Ledger.append` is one deque append: no lock, no I/O, no await. A thread wakes every
``flush_interval`` seconds, or as soon as ``flush_records`` have piled up, and writes what is there
in one transaction. The file is in WAL mode with a busy timeout, so several processes (``--workers``)
write to one file, each waiting its turn for the write lock (a few milliseconds a batch), and
readers never block them. Records that fail to be written stay buffered and are tried again.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.usage.records import COLUMNS, UsageRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0  # how long a write (or the schema) waits for another process's lock
SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    time REAL NOT NULL,
    request_id TEXT NOT NULL,
    project TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    status INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (time);
CREATE INDEX IF NOT EXISTS usage_by_project ON usage (project, time);
"""
INSERT = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection to the ledger's file that waits out other writers (autocommit: transactions are explicit)."""
    target = f"{path.resolve().as_uri()}?mode=ro" if read_only else str(path)
    return sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=read_only)


def open_file(path: Path) -> sqlite3.Connection:
    """The ledger's file, created (with its directory and table) when missing, in WAL mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")  # kept in the file: every later connection is WAL too
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash of the process loses nothing committed
        conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
    except BaseException:
        conn.close()
        raise
    return conn


def _take(queue: deque[T]) -> list[T]:
    """Everything in ``queue`` now (the flusher is its only consumer; producers may go on appending)."""
    return [queue.popleft() for _ in range(len(queue))]


class Ledger:
    """Usage records of this process, on their way to the SQLite file at ``path``.

    Thread-safe for producers: :meth:`append` may be called from any thread (an event loop, a batch
    runner's worker). :meth:`close` writes everything left; records appended after it are lost.
    """

    def __init__(self, path: Path, *, flush_interval: float = 0.5, flush_records: int = 1000) -> None:
        self.path = path
        self.written = 0  # records written so far
        self._interval = flush_interval
        self._threshold = flush_records
        self._buffer: deque[UsageRecord] = deque()
        self._later: deque[tuple[float, Callable[[], UsageRecord]]] = deque()
        self._waiters: deque[threading.Event] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._conn = open_file(path)  # at start-up: a file that cannot be written stops the gateway here
        self._thread = threading.Thread(target=self._run, name="usage-ledger", daemon=True)
        self._thread.start()

    def append(self, record: UsageRecord) -> None:
        """Queue ``record`` for the next write (the request path's whole cost: a deque append)."""
        buffer = self._buffer
        buffer.append(record)
        if len(buffer) >= self._threshold and not self._wake.is_set():
            self._wake.set()

    def append_later(self, delay: float, make: Callable[[], UsageRecord]) -> None:
        """Queue ``make()``'s record ``delay`` seconds from now (at the latest on close): for a request
        whose client went away while its models were still being stopped, so its counts are final."""
        self._later.append((time.monotonic() + delay, make))

    def flush(self, timeout: float = 30.0) -> bool:
        """Write every record appended so far (not those due later); blocking. False on timeout or once closed."""
        if self._closing:
            return False
        done = threading.Event()
        self._waiters.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self) -> None:
        """Write everything, records due later included, and stop the thread; blocking."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._cycle(final=False)
        self._cycle(final=True)

    def _cycle(self, final: bool) -> None:
        waiters = _take(self._waiters)  # before the records: what was appended before flush() is written now
        now = time.monotonic()
        for _ in range(len(self._later)):
            due, make = self._later.popleft()
            if not final and due > now:
                self._later.append((due, make))
                continue
            try:
                self._buffer.append(make())
            except Exception:
                log.exception("usage ledger: a deferred record could not be made")
        records = _take(self._buffer)
        if records:
            self._write(records, final)
        for waiter in waiters:
            waiter.set()

    def _write(self, records: list[UsageRecord], final: bool) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock now (waiting out other workers), not mid-way
            conn.executemany(INSERT, [r.row() for r in records])
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if final:
                log.error("usage ledger %s: %d records lost: %s", self.path, len(records), exc)
            else:
                log.error("usage ledger %s: %d records not written yet: %s", self.path, len(records), exc)
                self._buffer.extendleft(reversed(records))  # first in line next time
            return
        self.written += len(records)
