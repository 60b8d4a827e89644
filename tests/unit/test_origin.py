"""The client's address: the socket peer, or X-Forwarded-For read from the right past trusted proxies only."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from gateway.auth.origin import AccessControl, Origin, client_address, parse_ip, parse_networks
from gateway.config import GatewayConfig

TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8"])
PROXY = "10.0.0.1"
CLIENT = "203.0.113.7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:8080", "1.2.3.4"),
        ("::1", "::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # a dual-stack socket's IPv4 peer
        ("", None),
        ("unknown", None),
        ("_hidden", None),
        ("1.2.3.4:", None),
        ("1.2.3.4:x", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("[2001:db8::1]:", None),
        ("1.2.3", None),
        ("01.2.3.4", None),
        ("1.2.3.4/32", None),
        ("1.2.3.4 5.6.7.8", None),
    ],
)
def test_parse_ip(text: str, expected: str | None) -> None:
    parsed = parse_ip(text)
    assert (None if parsed is None else str(parsed)) == expected


def test_the_peer_when_no_proxy_is_trusted() -> None:
    assert client_address(CLIENT, None, ()) == ip_address(CLIENT)
    assert client_address(CLIENT, "198.51.100.1", ()) == ip_address(CLIENT)  # nobody vouches for the header
    assert client_address(None, "198.51.100.1", TRUSTED) is None
    assert client_address("not-an-ip", "198.51.100.1", TRUSTED) is None


def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    # a client connecting directly writes whatever it likes: ignored
    assert client_address(CLIENT, "127.0.0.1", TRUSTED) == ip_address(CLIENT)
    assert client_address(CLIENT, "10.0.0.5, 127.0.0.1", TRUSTED) == ip_address(CLIENT)


def test_a_trusted_proxy_names_the_client() -> None:
    assert client_address(PROXY, CLIENT, TRUSTED) == ip_address(CLIENT)
    assert client_address(PROXY, f" {CLIENT} ", TRUSTED) == ip_address(CLIENT)


def test_trusted_hops_are_skipped_from_the_right() -> None:
    # client -> proxy 10.0.0.2 -> proxy 10.0.0.1 -> gateway
    assert client_address(PROXY, f"{CLIENT}, 10.0.0.2", TRUSTED) == ip_address(CLIENT)
    assert client_address("fd00::1", f"{CLIENT}, fd00::2", TRUSTED) == ip_address(CLIENT)


def test_a_spoofed_leftmost_value_is_never_believed() -> None:
    # the client sent "X-Forwarded-For: 127.0.0.1"; the proxy appended the address it saw
    assert client_address(PROXY, f"127.0.0.1, {CLIENT}", TRUSTED) == ip_address(CLIENT)
    # ... or a trusted-looking one: still stops at the first untrusted address from the right
    assert client_address(PROXY, f"10.9.9.9, {CLIENT}, 10.0.0.2", TRUSTED) == ip_address(CLIENT)
    # ... or garbage to the left of its real address
    assert client_address(PROXY, f"garbage, {CLIENT}", TRUSTED) == ip_address(CLIENT)


def test_a_malformed_entry_stops_at_the_last_vouched_address() -> None:
    assert client_address(PROXY, "garbage", TRUSTED) == ip_address(PROXY)
    assert client_address(PROXY, f"{CLIENT}, , 10.0.0.2", TRUSTED) == ip_address("10.0.0.2")
    assert client_address(PROXY, f"{CLIENT}, unknown", TRUSTED) == ip_address(PROXY)
    assert client_address(PROXY, ",", TRUSTED) == ip_address(PROXY)
    assert client_address(PROXY, "1.2.3.4:99999x", TRUSTED) == ip_address(PROXY)


def test_every_hop_trusted() -> None:
    assert client_address(PROXY, "10.0.0.3, 10.0.0.2", TRUSTED) == ip_address("10.0.0.3")


def test_a_port_or_mapped_address_in_the_header() -> None:
    assert client_address(PROXY, f"{CLIENT}:5555", TRUSTED) == ip_address(CLIENT)
    assert client_address("::ffff:10.0.0.1", "[2001:db8::7]:1", TRUSTED) == ip_address("2001:db8::7")


def test_a_long_header_does_not_crash() -> None:
    header = ", ".join(["10.0.0.9"] * 2000 + ["x" * 5000])
    assert client_address(PROXY, header, TRUSTED) == ip_address(PROXY)


def test_access_control_listener_and_switch() -> None:
    control = AccessControl(["10.0.0.0/8"], private_listener=False)
    assert not control.active
    control.set_deployments(True)
    assert control.active
    control.set_deployments(False)
    assert not control.active
    control.private_ports = frozenset({9000})
    assert control.origin(9000, PROXY, CLIENT) == Origin("private", ip_address(CLIENT))
    assert control.origin(8000, CLIENT, "127.0.0.1") == Origin("public", ip_address(CLIENT))
    assert control.origin(None, None, None) == Origin("public", None)
    private = AccessControl([], private_listener=True)
    private.set_deployments(False)
    assert private.active  # a private listener keeps it on


def test_config_parses_trusted_proxies() -> None:
    config = GatewayConfig(trusted_proxies=[" 10.1.2.3/8", "::1", "192.168.0.1"])
    assert config.trusted_proxies == ["10.0.0.0/8", "::1/128", "192.168.0.1/32"]
    with pytest.raises(ValueError, match="trusted_proxies"):
        GatewayConfig(trusted_proxies=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="trusted_proxies"):
        GatewayConfig(trusted_proxies=["proxy.local"])
