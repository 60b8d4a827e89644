"""Who may call a deployment: its endpoints (which listener, with or without a key) and its ACL.

Built once per deployment version and immutable, so a check is a dict lookup and a scan of a few
prebuilt networks. :meth:`Access.admit` runs in ``ModelRegistry.get``, after the key's scope, before
any work: a deployment without an endpoint on the caller's listener answers 404 exactly as a model
that does not exist; a caller without a key gets 401 unless that endpoint disables auth; a client
address outside every ACL rule gets 403. A caller without an origin (the gRPC API) counts as one on
the public listener whose address is unknown: a deployment with ACL rules refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import TYPE_CHECKING

from gateway.auth.keys import NO_KEY, Principal
from gateway.auth.origin import IPAddress, Listener
from gateway.errors import Forbidden, ModelNotFound, Unauthorized

if TYPE_CHECKING:
    from gateway.deployments.records import AclRule, Endpoint


def not_found(model_id: str) -> ModelNotFound:
    """The answer for a model that does not exist (or is out of the caller's reach: the same)."""
    return ModelNotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param="model")


class Access:
    """A deployment's endpoints and ACL rules, ready to check callers against."""

    __slots__ = ("_endpoints", "_v4", "_v6")

    def __init__(self, endpoints: Iterable[Endpoint], acls: Iterable[AclRule] = ()) -> None:
        open_on: dict[Listener, bool] = {}  # listener -> whether a keyless caller may call it there
        for endpoint in endpoints:
            open_on[endpoint.visibility] = open_on.get(endpoint.visibility, False) or endpoint.disable_auth
        self._endpoints = open_on
        networks = [ip_network(rule.ip, strict=False) for rule in acls]
        self._v4 = tuple(net for net in networks if isinstance(net, IPv4Network))
        self._v6 = tuple(net for net in networks if isinstance(net, IPv6Network))

    def __eq__(self, other: object) -> bool:
        """The same answers to every caller (so a deployment change that keeps them keeps its model)."""
        if not isinstance(other, Access):
            return NotImplemented
        return (self._endpoints, set(self._v4), set(self._v6)) == (other._endpoints, set(other._v4), set(other._v6))

    def __hash__(self) -> int:
        return hash((frozenset(self._endpoints.items()), frozenset(self._v4), frozenset(self._v6)))

    @property
    def restricted(self) -> bool:
        """Whether ACL rules limit the client addresses."""
        return bool(self._v4 or self._v6)

    def open_on(self, listener: Listener) -> bool:
        """Whether the deployment answers callers without a key on ``listener``."""
        return self._endpoints.get(listener, False)

    def allows(self, address: IPAddress | None) -> bool:
        """Whether the ACL lets ``address`` in (no rules: every address; an unknown one: only then)."""
        if not (self._v4 or self._v6):
            return True
        if address is None:
            return False
        networks = self._v4 if address.version == 4 else self._v6
        return any(address in network for network in networks)

    def admit(self, model_id: str, principal: Principal) -> None:
        """Nothing when ``principal`` may call the deployment; else 404, 401 or 403 (in that order)."""
        origin = principal.origin
        listener: Listener = "public" if origin is None else origin.listener
        open_here = self._endpoints.get(listener)
        if open_here is None:
            raise not_found(model_id)
        if not principal.authenticated and not open_here:
            raise Unauthorized(NO_KEY)
        if self.restricted:
            address = None if origin is None else origin.peer
            if address is None:
                raise Forbidden(f"The model '{model_id}' accepts only listed client addresses, and yours is unknown.")
            if not self.allows(address):
                raise Forbidden(f"The model '{model_id}' does not accept requests from {address}.")

    def shows(self, principal: Principal) -> bool:
        """Whether /v1/models lists the deployment to ``principal``: :meth:`admit` would let it in."""
        origin = principal.origin
        open_here = self._endpoints.get("public" if origin is None else origin.listener)
        if open_here is None or not (principal.authenticated or open_here):
            return False
        return self.allows(None if origin is None else origin.peer)
