"""Port checks: the free-port check before launch and who listens on a port (/proc/net/tcp{,6})."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from gateway.embedded.ports import (
    PortClaim,
    first_conflict,
    foreign_or_unbound,
    listening_inodes,
    parse_listeners,
    port_in_use,
)
from gateway.workers import SHARED_PORTS_ENV, ports_shared
from perf.stack import free_port

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1001 1 0 100 0 0 10 0
   1: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0 100 0 0 10 0
   2: 0100007F:1F40 0100007F:9299 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0 100 0 0 10 0
   3: 0500000A:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1004 1 0 100 0 0 10 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when
   0: 0000000000000000FFFF00000100007F:1F41 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2001 1 0
   1: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2002 1 0
   2: 00000000000000000000000001000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2003 1 0
"""  # noqa: E501


def test_listeners_are_read_by_port_state_and_address() -> None:
    # 127.0.0.1:8000 and 0.0.0.0:8000 listen for 127.0.0.1; an established connection and 10.0.0.5 do not count
    assert parse_listeners(TCP, 8000, "127.0.0.1") == {1001}
    assert parse_listeners(TCP, 8001, "127.0.0.1") == {1002}
    assert parse_listeners(TCP, 8000, "10.0.0.5") == {1004}
    # IPv6: ::ffff:127.0.0.1 is 127.0.0.1; :: takes every address; ::1 is not 127.0.0.1
    assert parse_listeners(TCP6, 8001, "127.0.0.1") == {2001}
    assert parse_listeners(TCP6, 8000, "127.0.0.1") == {2002}
    assert parse_listeners(TCP6, 8000, "::1") == {2002, 2003}
    assert parse_listeners(TCP6, 8000, "localhost") == {2002, 2003}  # a name: every listener on the port counts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_listening_socket_is_found_with_its_owner() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        inodes = listening_inodes(port, "127.0.0.1")
        assert inodes is not None and len(inodes) == 1
        assert os.stat(f"/proc/self/fd/{listener.fileno()}").st_ino in inodes
        # this process is not in session 1 (init's): the port is someone else's
        assert foreign_or_unbound([port], "127.0.0.1", 1) == [f"port {port} not bound by tritonserver"]
        assert foreign_or_unbound([port], "127.0.0.1", os.getsid(0)) == []


def test_a_port_in_use_is_named_with_the_setting_that_moves_it() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        assert port_in_use("0.0.0.0", port)  # a wildcard bind would collide too
        claims = [
            PortClaim("127.0.0.1", free_port(), "gateway REST", "--port", "GATEWAY_PORT"),
            PortClaim("127.0.0.1", port, "Triton gRPC", "--triton-grpc-port", "TRITON_GRPC_PORT"),
        ]
        assert first_conflict(claims) == (
            f"port {port} (Triton gRPC) is in use: set --triton-grpc-port or TRITON_GRPC_PORT"
        )
    assert not port_in_use("127.0.0.1", port)
    assert first_conflict(claims) is None


def test_a_port_shared_with_so_reuseport_is_still_in_use() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert port_in_use("127.0.0.1", listener.getsockname()[1])


def test_a_port_set_twice_is_an_error() -> None:
    port = free_port()
    claims = [
        PortClaim("127.0.0.1", port, "gateway REST", "--port", "GATEWAY_PORT"),
        PortClaim("127.0.0.1", port, "Triton HTTP", "--triton-http-port", "TRITON_HTTP_PORT"),
    ]
    assert first_conflict(claims) == (
        f"port {port} is set for both gateway REST and Triton HTTP: set --triton-http-port or TRITON_HTTP_PORT"
    )
    assert (
        first_conflict([PortClaim("127.0.0.1", 0, "a", "--a", "A"), PortClaim("127.0.0.1", 0, "b", "--b", "B")]) is None
    )


def test_only_the_gateways_own_workers_share_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SHARED_PORTS_ENV, raising=False)
    assert not ports_shared()
    monkeypatch.setenv(SHARED_PORTS_ENV, "1")
    assert ports_shared()


def test_the_grpc_api_reads_whether_ports_are_shared_when_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.grpcapi.server import server_options  # imported before the setting changes, as a worker does

    monkeypatch.delenv(SHARED_PORTS_ENV, raising=False)
    assert ("grpc.so_reuseport", 0) in server_options()
    monkeypatch.setenv(SHARED_PORTS_ENV, "1")
    assert ("grpc.so_reuseport", 1) in server_options()
