"""Who may listen where: a free-port check before launch, and which process answers on a port.

Before anything is launched, every port the gateway and its Triton will listen on is bound once
(then released) the way a server binds it: SO_REUSEADDR, never SO_REUSEPORT, so a port that
another process listens on, even one that shares it with SO_REUSEPORT, is found in use.

After launch, Linux tells which sockets listen on a port (``/proc/net/tcp{,6}``, by inode) and
which sockets a process holds (``/proc/<pid>/fd``): together they show whether the Triton we
launched is the one answering. Elsewhere these return None and the caller skips the check.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_PROC = Path("/proc")


@dataclass(frozen=True)
class PortClaim:
    """A port a part of the stack will listen on, and the setting that moves it."""

    host: str
    port: int
    what: str  # "Triton gRPC"
    flag: str  # "--triton-grpc-port"
    env: str  # "TRITON_GRPC_PORT"

    def in_use_message(self) -> str:
        return f"port {self.port} ({self.what}) is in use: set {self.flag} or {self.env}"


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` as a server would fail because something listens there.

    Any other failure (an address this machine lacks, a privileged port) is left for the server
    itself to report.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def first_conflict(claims: Iterable[PortClaim]) -> str | None:
    """The one-line error for the first port that is set twice or already in use; None when all are free."""
    seen: dict[int, PortClaim] = {}
    for claim in claims:
        if claim.port == 0:  # the kernel picks a free one
            continue
        other = seen.get(claim.port)
        if other is not None:
            return f"port {claim.port} is set for both {other.what} and {claim.what}: set {claim.flag} or {claim.env}"
        seen[claim.port] = claim
        if port_in_use(claim.host, claim.port):
            return claim.in_use_message()
    return None


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    flipped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(flipped)


def _covers(listener: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> bool:
    """Whether a listener on ``listener`` takes connections meant for ``host`` (True when unsure)."""
    if isinstance(listener, ipaddress.IPv6Address) and listener.ipv4_mapped is not None:
        listener = listener.ipv4_mapped
    if listener.is_unspecified:
        return True
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:
        return True
    if isinstance(wanted, ipaddress.IPv6Address) and wanted.ipv4_mapped is not None:
        wanted = wanted.ipv4_mapped
    return listener == wanted


def parse_listeners(table: str, port: int, host: str) -> set[int]:
    """Inodes of the sockets in a /proc/net/tcp{,6} ``table`` that listen on ``port`` for ``host``."""
    inodes: set[int] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        address, _, hex_port = fields[1].partition(":")
        if int(hex_port, 16) != port or not _covers(_address(address), host):
            continue
        inodes.add(int(fields[9]))
    return inodes


def listening_inodes(port: int, host: str) -> set[int] | None:
    """Inodes of every socket listening on ``port`` for ``host``; None where /proc cannot tell (not Linux)."""
    tables = [_PROC / "net" / "tcp", _PROC / "net" / "tcp6"]
    if not tables[0].is_file():
        return None
    inodes: set[int] = set()
    for table in tables:
        try:
            inodes |= parse_listeners(table.read_text(), port, host)
        except OSError:
            continue
    return inodes


def session_members(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (Triton and the backend stubs it started)."""
    members = []
    for stat in _PROC.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(stat.parent.name))
    return members


def socket_inodes(pids: Iterable[int]) -> set[int]:
    """Inodes of the sockets that these processes hold open."""
    inodes: set[int] = set()
    for pid in pids:
        fd_dir = _PROC / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def foreign_or_unbound(ports: Iterable[int], host: str, sid: int) -> list[str] | None:
    """What keeps session ``sid`` from being the only listener on each port; [] when it is; None when unknowable.

    Each entry is a short phrase for an error message: "port 8001 not bound by tritonserver" or
    "port 8001 also bound by another process".
    """
    wanted = list(ports)
    per_port = {port: listening_inodes(port, host) for port in wanted}
    if any(inodes is None for inodes in per_port.values()):
        return None
    ours = socket_inodes(session_members(sid))
    problems = []
    for port, inodes in per_port.items():
        assert inodes is not None
        if not inodes & ours:
            problems.append(f"port {port} not bound by tritonserver")
        elif inodes - ours:
            problems.append(f"port {port} also bound by another process")
    return problems
