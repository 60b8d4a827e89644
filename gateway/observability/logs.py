"""The console log: one line per record, made cheaply, since the access log writes one per request.

A record costs what the standard library gathers for it whether a format uses it or not: the
caller's file and line (a stack walk), the thread, the process id, the multiprocessing name. The
gateway's formats show none of these but the workers' process id, so :func:`setup` turns the others
off (the ``logging`` HOWTO's "Optimization" list). The timestamp's date and time are formatted once
per second, not once per record.
"""

from __future__ import annotations

import logging
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class Formatter(logging.Formatter):
    """``logging.Formatter`` with the default time format (``2026-12-01 06:22:21,372``), its
    ``strftime`` kept for the second it stands for."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


def setup(level: str, fmt: str = FORMAT) -> None:
    """The root logger's console handler (as ``logging.basicConfig``), with cheap records."""
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = "%(process)" in fmt  # a getpid() per record otherwise: only the workers' lines show it
    logging._srcfile = None  # no stack walk for the caller's file and line (no format shows them)
    console = logging.StreamHandler()
    console.setFormatter(Formatter(fmt))
    logging.basicConfig(level=level, handlers=[console])
