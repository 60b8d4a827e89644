"""The usage ledger on its own: the buffer and its flushes, retries, deferred records, two processes on
one file, a restart, and the sums and prices of :mod:`gateway.usage.query` (SQLite files in tmp_path)."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.usage import ledger as ledger_module
from gateway.usage.ledger import Ledger
from gateway.usage.query import BATCH_PRICE, Cost, Price, UsageQuery, UsageRow, aggregate, totals
from gateway.usage.records import UsageRecord

DAY = 86_400
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def record(**fields: Any) -> UsageRecord:
    base: dict[str, Any] = {"project": "p", "model": "m", "endpoint": "/v1/chat/completions", "time": T0}
    return UsageRecord(**(base | fields))


def rows_in(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT project, model, input_tokens, output_tokens, batch, status FROM usage").fetchall()


def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


def test_record_row_matches_columns() -> None:
    r = record(input_tokens=3, output_tokens=4, status=499, batch=True, key_id="k", request_id="r")
    assert r.row() == (T0, "r", "p", "k", "m", "/v1/chat/completions", 3, 4, 1, 499)
    assert UsageRecord(project="p", model="m", endpoint="e").time == pytest.approx(time.time(), abs=5)


def test_interval_flush_writes_without_being_asked(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "u.sqlite", flush_interval=0.05)
    try:
        for i in range(3):
            ledger.append(record(input_tokens=i))
        wait_for(lambda: ledger.written == 3)
        assert sorted(r[2] for r in rows_in(ledger.path)) == [0, 1, 2]
    finally:
        ledger.close()


def test_a_full_buffer_is_written_at_once_and_flush_writes_the_rest(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "u.sqlite", flush_interval=3600, flush_records=10)
    try:
        for _ in range(10):
            ledger.append(record())
        wait_for(lambda: ledger.written == 10)  # long before the interval
        for _ in range(3):
            ledger.append(record())
        time.sleep(0.2)
        assert ledger.written == 10  # under the threshold: waits for the interval
        assert ledger.flush()
        assert ledger.written == 13 and len(rows_in(ledger.path)) == 13
    finally:
        ledger.close()


def test_close_writes_everything_and_deferred_records_read_late(tmp_path: Path) -> None:
    path = tmp_path / "u.sqlite"
    ledger = Ledger(path, flush_interval=3600)
    counts = {"output": 1}
    ledger.append(record(status=200))
    ledger.append_later(3600, lambda: record(status=499, output_tokens=counts["output"]))
    counts["output"] = 7  # the counts went on after the client left: the record reads them when made
    ledger.close()
    assert sorted(rows_in(path)) == [("p", "m", 0, 0, 0, 200), ("p", "m", 0, 7, 0, 499)]
    assert not ledger.flush()  # closed: nothing more is written


def test_deferred_record_is_written_when_due(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger(tmp_path / "u.sqlite", flush_interval=0.02)
    try:

        def broken() -> UsageRecord:
            raise RuntimeError("boom")

        with caplog.at_level(logging.ERROR, logger="gateway.usage.ledger"):
            ledger.append_later(0.05, broken)
            ledger.append_later(0.05, lambda: record(output_tokens=5))
            wait_for(lambda: ledger.written == 1)
        assert rows_in(ledger.path) == [("p", "m", 0, 5, 0, 200)]
        assert "could not be made" in caplog.text
    finally:
        ledger.close()


def test_records_not_written_are_kept_and_written_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ledger_module, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "u.sqlite"
    ledger = Ledger(path, flush_interval=0.02)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        with caplog.at_level(logging.ERROR, logger="gateway.usage.ledger"):
            blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock past the busy timeout
            ledger.append(record(input_tokens=1))
            wait_for(lambda: "not written yet" in caplog.text)
            assert ledger.written == 0
            blocker.execute("COMMIT")
            wait_for(lambda: ledger.written == 1)
        assert rows_in(path) == [("p", "m", 1, 0, 0, 200)]
    finally:
        blocker.close()
        ledger.close()


def test_a_restarted_ledger_keeps_the_old_records(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "u.sqlite"  # the directory is made
    first = Ledger(path)
    first.append(record(input_tokens=10))
    first.close()
    second = Ledger(path)
    second.append(record(input_tokens=20))
    second.close()
    assert sorted(r[2] for r in rows_in(path)) == [10, 20]


def _writer(path: str, worker: int, count: int, go: Any) -> None:
    go.wait()
    ledger = Ledger(Path(path), flush_interval=0.01, flush_records=25)  # both create the file at once
    for i in range(count):
        ledger.append(record(project=f"w{worker}", input_tokens=1, output_tokens=i))
        if i % 100 == 0:
            time.sleep(0.005)  # spread the writes, so the two processes' transactions interleave
    ledger.close()


def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path, count = tmp_path / "shared.sqlite", 1500
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), w, count, go)) for w in (1, 2)]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    rows = aggregate(path, UsageQuery())
    by_project = {r.project: r for r in rows}
    assert set(by_project) == {"w1", "w2"}
    for row in by_project.values():
        assert row.requests == count and row.input_tokens == count
        assert row.output_tokens == count * (count - 1) // 2
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "u.sqlite"
    ledger = Ledger(path)
    for r in (
        record(project="a", model="m1", input_tokens=100, output_tokens=10, time=T0 + 10),
        record(project="a", model="m1", input_tokens=200, output_tokens=20, time=T0 + 3_700),  # 2nd hour
        record(project="a", model="m1", input_tokens=1000, output_tokens=100, batch=True, time=T0 + 20),
        record(project="a", model="m2", input_tokens=5, output_tokens=5, time=T0 + DAY + 1),  # next day
        record(project="b", model="m1", input_tokens=7, output_tokens=3, status=499, time=T0 + 30),
    ):
        ledger.append(r)
    ledger.close()
    return path


def test_aggregate_by_day_and_hour(filled: Path) -> None:
    by_day = aggregate(filled, UsageQuery())
    assert by_day == [
        UsageRow(int(T0), "a", "m1", False, 2, 300, 30),
        UsageRow(int(T0), "a", "m1", True, 1, 1000, 100),
        UsageRow(int(T0), "b", "m1", False, 1, 7, 3),
        UsageRow(int(T0) + DAY, "a", "m2", False, 1, 5, 5),
    ]
    by_hour = aggregate(filled, UsageQuery(group_by="hour", projects=("a",), models=("m1",), batch=False))
    assert by_hour == [
        UsageRow(int(T0), "a", "m1", False, 1, 100, 10),
        UsageRow(int(T0) + 3600, "a", "m1", False, 1, 200, 20),
    ]


def test_aggregate_filters_and_bounds(filled: Path) -> None:
    assert [r.project for r in aggregate(filled, UsageQuery(projects=("b",)))] == ["b"]
    assert [r.batch for r in aggregate(filled, UsageQuery(batch=True))] == [True]
    in_day_two = aggregate(filled, UsageQuery(start=T0 + DAY))  # start inclusive
    assert [(r.model, r.input_tokens) for r in in_day_two] == [("m2", 5)]
    first_hour = aggregate(filled, UsageQuery(start=T0, end=T0 + 3_700))  # end exclusive
    assert sum(r.input_tokens for r in first_hour) == 100 + 1000 + 7
    assert aggregate(filled, UsageQuery(projects=("nobody",))) == []
    assert aggregate(filled.parent / "missing.sqlite", UsageQuery()) == []


def test_prices_per_1k_and_batch_at_half() -> None:
    price = Price(input_per_1k=0.5, output_per_1k=2.0)
    interactive = UsageRow(0, "a", "m1", False, 1, 2_000, 500)
    batch = UsageRow(0, "a", "m1", True, 1, 2_000, 500)
    assert interactive.cost(price) == Cost(1.0, 1.0)
    assert batch.cost(price) == Cost(1.0 * BATCH_PRICE, 1.0 * BATCH_PRICE) == Cost(0.5, 0.5)
    total = totals([interactive, batch, UsageRow(0, "a", "unpriced", False, 4, 1_000, 1_000)], {"m1": price})
    assert (total.requests, total.input_tokens, total.output_tokens) == (6, 5_000, 2_000)
    assert total.cost == Cost(1.5, 1.5) and total.cost.total == 3.0
