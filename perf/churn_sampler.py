"""The churn benchmark's look at the processes: the gateway's RSS, open fds and CPU time, its
tritonserver child (with Triton's model processes) from /proc, and Triton restarts in its log."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from perf.stack import process_cpu_seconds

RESTART_LINE = b"tritonserver exited unexpectedly"


@dataclass(slots=True)
class Sample:
    """One look at the processes, ``t`` seconds into the run (``None``: unknown or gone)."""

    t: float
    gateway_rss_kb: int | None
    gateway_fds: int | None
    gateway_cpu_s: float | None
    triton_pid: int | None
    triton_rss_kb: int | None  # tritonserver and its model processes (Python-backend stubs) together
    log_restarts: int = 0  # "tritonserver exited unexpectedly" lines in the gateway's log so far


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    return head.partition("(")[2], fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def process_table() -> dict[int, tuple[str, str, int]]:
    """Every live process: pid -> (comm, state, ppid)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] not in ("Z", "X"):
                table[int(entry)] = stat
    return table


def find_child(table: dict[int, tuple[str, str, int]], ppid: int, comm: str = "tritonserver") -> int | None:
    """A live child of ``ppid`` named ``comm`` (the embedded Triton the gateway launched)."""
    return next((pid for pid, (name, _, parent) in table.items() if parent == ppid and name == comm), None)


def descendants(table: dict[int, tuple[str, str, int]], root: int) -> list[int]:
    """``root`` and every process under it (Triton's Python-backend model processes)."""
    children: dict[int, list[int]] = {}
    for pid, (_, _, parent) in table.items():
        children.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` (found through the socket's inode)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry)
    return None


class Sampler:
    """Samples the gateway process, its tritonserver child, and the gateway's log."""

    def __init__(self, pid: int, log: Path | None) -> None:
        self.pid = pid
        self.log = log
        self._offset = 0
        self._tail = b""
        self.log_restarts = 0
        self.samples: list[Sample] = []

    def _scan_log(self) -> None:
        if self.log is None:
            return
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        self._offset += len(chunk)
        text = self._tail + chunk
        cut = text.rfind(b"\n") + 1  # count whole lines only
        self.log_restarts += text[:cut].count(RESTART_LINE)
        self._tail = text[cut:]

    def sample(self, t: float) -> Sample:
        self._scan_log()
        pid = self.pid
        table = process_table()
        triton = find_child(table, pid) if pid in table else None
        tree = [_rss_kb(p) for p in descendants(table, triton)] if triton else []
        s = Sample(
            t=round(t, 3),
            gateway_rss_kb=_rss_kb(pid) if pid else None,
            gateway_fds=_fds(pid) if pid else None,
            gateway_cpu_s=process_cpu_seconds(pid) if pid in table else None,
            triton_pid=triton,
            triton_rss_kb=sum(kb for kb in tree if kb is not None) if triton else None,
            log_restarts=self.log_restarts,
        )
        self.samples.append(s)
        return s
