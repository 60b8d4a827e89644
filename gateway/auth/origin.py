"""Where a request came from: the listener it arrived on and the client's address.

The client is the socket's peer, unless that peer is a trusted reverse proxy: then
``X-Forwarded-For`` is read from the right (each proxy appends the address it was called from),
skipping trusted hops; the first untrusted address is the client. A client can write anything at
the left of the header, never at the right of what a trusted proxy appended, so a value is believed
only as far as trusted proxies vouch for it. An entry that is not an address stops the walk: the
client is then the last address a trusted proxy vouched for.

:class:`AccessControl` is the per-app state the REST auth middleware reads: whether deployments'
endpoints and ACLs apply at all (when not, requests carry no origin and nothing is computed), the
private listener's port(s) and the trusted proxies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Literal

Listener = Literal["public", "private"]
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Origin:
    """The listener a request arrived on and its client's address (None: unknown)."""

    listener: Listener
    peer: IPAddress | None


def parse_ip(text: str) -> IPAddress | None:
    """An address as sockets and proxies write it (``1.2.3.4``, ``::1``, ``[::1]``, ``[::1]:80``,
    ``1.2.3.4:80``); IPv4-mapped IPv6 as IPv4. None when it is not one."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        if end < 0 or not (end == len(text) - 1 or (text[end + 1] == ":" and text[end + 2 :].isdigit())):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port (a bare v6 has at least two colons)
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks from addresses or CIDRs (host bits allowed); ValueError names a bad one."""
    return tuple(ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def within(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    """Whether ``address`` is in one of ``networks`` (a linear scan: lists here are a few entries)."""
    return any(address in network for network in networks)  # another IP version: simply not in it


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """The client of a connection from ``peer`` that sent ``forwarded_for`` (the ``X-Forwarded-For``
    values, comma-joined), believing only proxies in ``trusted``. None: the peer is unknown."""
    address = parse_ip(peer) if peer else None
    if address is None or not forwarded_for or not trusted or not within(address, trusted):
        return address
    for entry in reversed(forwarded_for.split(",")):
        hop = parse_ip(entry)
        if hop is None:  # malformed: stop at the last address a trusted proxy vouched for
            return address
        if not within(hop, trusted):
            return hop
        address = hop
    return address  # every hop is a trusted proxy: the first of them is the client


class AccessControl:
    """Per app: whether deployments' endpoints and ACLs apply, and what tells a request's origin.

    ``active`` is read on every request: while it is false the auth middleware does exactly what it
    did before access control existed. It is true while a private listener is configured or
    :meth:`set_deployments` said that some served model has endpoints or ACLs.
    """

    __slots__ = ("_deployments", "_private", "active", "private_ports", "trusted")

    def __init__(self, trusted_proxies: Iterable[str], private_listener: bool) -> None:
        self.trusted: tuple[IPNetwork, ...] = parse_networks(trusted_proxies)
        self.private_ports: frozenset[int] = frozenset()  # local ports of the private listener (set by run.serve)
        self._private = private_listener
        self._deployments = False
        self.active = private_listener

    def set_deployments(self, active: bool) -> None:
        """Whether some served model has an :class:`~gateway.auth.access.Access` (endpoints, ACLs)."""
        self._deployments = active
        self.active = self._private or active

    def listener(self, local_port: int | None) -> Listener:
        return "private" if local_port is not None and local_port in self.private_ports else "public"

    def origin(self, local_port: int | None, peer: str | None, forwarded_for: str | None) -> Origin:
        return Origin(self.listener(local_port), client_address(peer, forwarded_for, self.trusted))
