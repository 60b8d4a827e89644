"""The console log's formatter: the standard library's lines, its timestamp made once per second."""

from __future__ import annotations

import logging

from gateway.observability.logs import FORMAT, WORKER_FORMAT, Formatter


def _record(created: float, msg: str = "hello") -> logging.LogRecord:
    record = logging.LogRecord("gateway.access", logging.INFO, "", 0, "%s", (msg,), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    record.process = 4242  # set here: logs.setup may have turned the lookup off (a CLI test run in this process)
    return record


def test_lines_are_the_standard_formatters() -> None:
    for fmt in (FORMAT, WORKER_FORMAT):
        ours, stock = Formatter(fmt), logging.Formatter(fmt)
        # within one second, across a second's edge, back in time, and the same second again
        for created in (1_796_000_000.004, 1_796_000_000.999, 1_796_000_001.0, 1_795_999_999.5, 1_796_000_001.25):
            record = _record(created)
            assert ours.format(record) == stock.format(record)


def test_a_date_format_given_is_honoured() -> None:
    ours, stock = Formatter(FORMAT), logging.Formatter(FORMAT)
    record = _record(1_796_000_000.5)
    assert ours.formatTime(record, "%H:%M") == stock.formatTime(record, "%H:%M")
