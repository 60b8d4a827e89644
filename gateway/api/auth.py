"""REST authentication: every /v1 route (and its /{project_id}/v1 twin) needs a key when keys exist;
the operator API's routes (/admin/..., /inference/...) need an admin key (``Authorization: Bearer KEY``
or ``X-Auth-Token: KEY``), or with auth off a loopback client.

Deployments' endpoints and ACLs (:mod:`gateway.auth.access`) need to know where a request came
from. While access control is active (a private listener is configured, or
:func:`set_access_active` said some served model has endpoints or ACLs), the middleware attaches
the request's :class:`~gateway.auth.origin.Origin` to its principal, and a request without a key
on a model route is let in as an unauthenticated caller of the models whose endpoint on its
listener disables auth. While it is inactive the middleware does what it always did.

Which listener a request came on: the local port of its connection, compared with the private
listener's (``run.serve`` binds it and records its port; the two listeners need distinct ports).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from aiohttp import web

from gateway.api.context import ACCESS, CONFIG, KEYS, PRINCIPAL, REGISTRY
from gateway.auth.keys import Principal, unauthenticated
from gateway.auth.origin import AccessControl, Origin, client_address, parse_ip, parse_networks, within
from gateway.core.lifecycle import LIFECYCLE
from gateway.errors import Forbidden, Unauthorized

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# probes, and the API's description (it names no model or key; a browser opening /docs sends no key)
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json", "/docs"})
# the operator API: /admin/v1 and its Scaleway-style aliases /inference/v1beta1/regions/{region}
ADMIN_PREFIXES = ("/admin/", "/inference/")
# the routes that name a model: a caller without a key may reach them (only /v1 and vLLM's unversioned
# paths: a project-scoped path names a project, which needs a key of it)
MODEL_ROUTES = frozenset(
    {
        *(
            f"/v1/{route}"
            for route in (
                "chat/completions",
                "responses",
                "completions",
                "embeddings",
                "audio/transcriptions",
                "audio/translations",
                "rerank",
                "score",
                "tokenize",
                "detokenize",
                "models",
                "models/{model_id}",
            )
        ),
        "/tokenize",
        "/detokenize",
        "/rerank",
        "/v2/rerank",
        "/score",
    }
)
NO_ADMIN_KEY = "The admin API needs an admin key: 'X-Auth-Token: YOUR_KEY' or 'Authorization: Bearer YOUR_KEY'."


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path not in OPEN_PATHS:
        LIFECYCLE.accept()
        if path.startswith(ADMIN_PREFIXES):
            request[PRINCIPAL] = require_admin(request)
        else:
            control = request.app.get(ACCESS)
            if control is None or not control.active:
                principal = request.app[KEYS].authenticate(request.headers.get("Authorization"))
            else:
                principal = _guarded_caller(request, control)
            principal.check_project(request.match_info.get("project_id"))
            request[PRINCIPAL] = principal
    return await handler(request)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def access_control(app: web.Application) -> AccessControl:
    """The app's access-control state, made on first use (make it before the app starts: ``run.serve``
    does, and so does :func:`set_access_active` called from a startup context)."""
    control = app.get(ACCESS)
    if control is None:
        config = app[CONFIG]
        control = app[ACCESS] = AccessControl(config.trusted_proxies, config.private_host is not None)
    return control


def set_access_active(app: web.Application, active: bool) -> None:
    """Whether some served model has an ``Access`` (a deployment's endpoints and ACLs). The deployments'
    manager says so whenever that changes; a private listener keeps access control on regardless."""
    access_control(app).set_deployments(active)


def origin_of(request: web.Request, control: AccessControl) -> Origin:
    """The listener ``request`` arrived on and its client (the peer, or who trusted proxies forwarded)."""
    local_port, peer = _ends(request)
    return control.origin(local_port, peer, _forwarded_for(request) if control.trusted else None)


def require_admin(request: web.Request) -> Principal:
    """The caller of an admin route: an admin key (``X-Auth-Token`` or ``Authorization: Bearer``); 401
    without a valid key, 403 for a key that is not an admin's. With auth off: loopback clients only."""
    principal = request.get(PRINCIPAL)
    if principal is None:
        principal = _admin_caller(request)
    if principal.admin:
        return principal
    if not principal.authenticated:
        raise Unauthorized(NO_ADMIN_KEY)
    if request.app[KEYS].enabled:
        raise Forbidden("The admin API needs an admin key.")
    if not _loopback_client(request):
        raise Forbidden("With auth off (no keys configured) the admin API answers loopback clients only.")
    return principal


def _guarded_caller(request: web.Request, control: AccessControl) -> Principal:
    keys = request.app[KEYS]
    origin = origin_of(request, control)
    authorization = request.headers.get("Authorization")
    if not authorization and keys.enabled and _model_route(request):
        listener = origin.listener
        models = frozenset(
            m.id for m in request.app[REGISTRY].models() if m.access is not None and m.access.open_on(listener)
        )
        if models:
            return unauthenticated(origin, models)
    return replace(keys.authenticate(authorization), origin=origin)


def _admin_caller(request: web.Request) -> Principal:
    keys = request.app[KEYS]
    authorization = request.headers.get("Authorization")
    if not authorization:
        token = request.headers.get("X-Auth-Token", "").strip()
        if token:
            authorization = f"Bearer {token}"
        elif keys.enabled:
            raise Unauthorized(NO_ADMIN_KEY)
    principal = keys.authenticate(authorization)
    control = request.app.get(ACCESS)
    if control is not None and control.active:
        principal = replace(principal, origin=origin_of(request, control))
    return principal


def _model_route(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in MODEL_ROUTES


def _ends(request: web.Request) -> tuple[int | None, str | None]:
    """The connection's local port and its peer's address (None each when unknown)."""
    transport = request.transport
    if transport is None:
        return None, None
    sockname = transport.get_extra_info("sockname")
    peername = transport.get_extra_info("peername")
    local_port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
    peer = str(peername[0]) if isinstance(peername, (tuple, list)) and peername else None
    return local_port, peer


def _forwarded_for(request: web.Request) -> str | None:
    values = request.headers.getall("X-Forwarded-For", ())
    return ",".join(values) if values else None


def _loopback_client(request: web.Request) -> bool:
    """Whether the client is on this machine. A loopback peer forwarding for someone else (an
    ``X-Forwarded-For`` or ``Forwarded`` header) is a proxy: only a trusted one is believed."""
    _, peer = _ends(request)
    address = parse_ip(peer) if peer else None
    if address is None:
        return False
    forwarded = _forwarded_for(request)
    if forwarded is None and "Forwarded" in request.headers:
        return False  # RFC 7239's header is not read: whom it forwards for is unknown
    if forwarded is not None:
        control = request.app.get(ACCESS)
        trusted = control.trusted if control is not None else parse_networks(request.app[CONFIG].trusted_proxies)
        if not within(address, trusted):
            return False
        address = client_address(peer, forwarded, trusted)
    return address is not None and address.is_loopback
