"""A deployment's endpoints and ACL: 404 on a listener it has no endpoint on, 401 without a key unless
that endpoint disables auth, 403 for an address outside its rules; /v1/models shows only what admits."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest

from gateway.auth.access import Access
from gateway.auth.keys import Principal, unauthenticated
from gateway.auth.origin import Listener, Origin
from gateway.config import LimitsConfig
from gateway.deployments.records import AclRule, Endpoint
from gateway.errors import Forbidden, GatewayError, ModelNotFound, Unauthorized

MODEL = "dep-model"
KEYED = Principal("k1", "k1", "team", None, LimitsConfig(), LimitsConfig())


def caller(listener: Listener = "public", peer: str | None = "127.0.0.1", key: bool = True) -> Principal:
    origin = Origin(listener, None if peer is None else ip_address(peer))
    return replace(KEYED, origin=origin) if key else unauthenticated(origin, frozenset({MODEL}))


def refusal(access: Access, principal: Principal) -> type[GatewayError] | None:
    try:
        access.admit(MODEL, principal)
    except GatewayError as exc:
        assert access.shows(principal) is False
        return type(exc)
    assert access.shows(principal) is True
    return None


def test_a_public_endpoint_answers_keys_on_the_public_listener_only() -> None:
    access = Access([Endpoint()])
    assert refusal(access, caller()) is None
    assert refusal(access, caller("private")) is ModelNotFound
    assert refusal(access, caller(key=False)) is Unauthorized
    assert refusal(access, KEYED) is None  # no origin (the gRPC API): the public listener


def test_the_wrong_listener_is_the_unknown_model_answer() -> None:
    with pytest.raises(ModelNotFound) as info:
        Access([Endpoint(visibility="private")]).admit(MODEL, caller())
    assert info.value.message == f"The model '{MODEL}' does not exist or you do not have access to it."
    assert info.value.param == "model"


def test_a_private_endpoint() -> None:
    access = Access([Endpoint(visibility="private")])
    assert refusal(access, caller("private")) is None
    assert refusal(access, caller("public")) is ModelNotFound
    assert refusal(access, KEYED) is ModelNotFound


def test_disable_auth_is_per_listener() -> None:
    access = Access([Endpoint(visibility="private", disable_auth=True), Endpoint(visibility="public")])
    assert access.open_on("private") and not access.open_on("public")
    assert refusal(access, caller("private", key=False)) is None
    assert refusal(access, caller("public", key=False)) is Unauthorized
    assert refusal(access, caller("public")) is None
    # two endpoints on one listener: open if either is
    both = Access([Endpoint(), Endpoint(disable_auth=True)])
    assert both.open_on("public") and refusal(both, caller(key=False)) is None


def test_no_endpoints_answers_nowhere() -> None:
    access = Access([])
    assert refusal(access, caller()) is ModelNotFound
    assert refusal(access, caller("private")) is ModelNotFound


def test_acl_rules() -> None:
    access = Access(
        [Endpoint(disable_auth=True)],
        [AclRule(ip="10.0.0.0/8", description="office"), AclRule(ip="2001:db8::/32"), AclRule(ip="192.0.2.7")],
    )
    assert access.restricted
    for allowed in ("10.1.2.3", "2001:db8::5", "192.0.2.7"):
        assert refusal(access, caller(peer=allowed)) is None
        assert refusal(access, caller(peer=allowed, key=False)) is None
    for refused in ("127.0.0.1", "192.0.2.8", "2001:db9::1", "::1"):
        assert refusal(access, caller(peer=refused)) is Forbidden
    with pytest.raises(Forbidden, match=r"does not accept requests from 127\.0\.0\.1"):
        access.admit(MODEL, caller(peer="127.0.0.1"))


def test_acl_with_an_unknown_address_refuses() -> None:
    access = Access([Endpoint()], [AclRule(ip="127.0.0.1")])
    assert refusal(access, caller(peer=None)) is Forbidden
    with pytest.raises(Forbidden, match="unknown"):
        access.admit(MODEL, KEYED)  # the gRPC API: no origin
    assert refusal(Access([Endpoint()]), caller(peer=None)) is None  # no rules: any address, known or not


def test_the_checks_come_in_order() -> None:
    access = Access([Endpoint()], [AclRule(ip="10.0.0.0/8")])
    assert refusal(access, caller("private", peer="127.0.0.1", key=False)) is ModelNotFound
    assert refusal(access, caller("public", peer="127.0.0.1", key=False)) is Unauthorized
    assert refusal(access, caller("public", peer="127.0.0.1")) is Forbidden


def test_an_unauthenticated_caller_is_kept_to_its_models() -> None:
    principal = caller(key=False)
    assert principal.may_use(MODEL)
    with pytest.raises(Unauthorized):
        principal.may_use("another-model")
    assert not replace(KEYED, models=frozenset()).may_use(MODEL)  # a key out of scope: False (404 alike)
