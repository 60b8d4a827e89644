"""REST authentication: every /v1 route (and its /{project_id}/v1 twin) needs a key when keys exist."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.api.context import KEYS, PRINCIPAL
from gateway.auth.keys import Principal
from gateway.core.lifecycle import LIFECYCLE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# probes, and the API's description (it names no model or key; a browser opening /docs sends no key)
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json", "/docs"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS:
        LIFECYCLE.accept()
        principal = request.app[KEYS].authenticate(request.headers.get("Authorization"))
        principal.check_project(request.match_info.get("project_id"))
        request[PRINCIPAL] = principal
    return await handler(request)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
