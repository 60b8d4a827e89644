"""CORS for browser clients, from ``cors_origins``: off (no CORS headers at all) unless origins are set.

Two parts. A middleware answers preflights (``OPTIONS`` with ``Access-Control-Request-Method``) on
every route before authentication, since browsers never send a key with a preflight; a preflight
from an origin not allowed gets 403 and no CORS headers. An ``on_response_prepare`` hook stamps
every real response of an allowed origin, streams and errors included, just before its headers go
out. Credentials are never allowed: clients send their key as ``Authorization`` explicitly.
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import Forbidden

MAX_AGE = "600"  # seconds a browser may reuse a preflight's answer
# for a preflight that names no headers; one that does gets those echoed (OpenAI's SDKs add X-Stainless-*)
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID, OpenAI-Organization, OpenAI-Project, OpenAI-Beta"
# the gateway's own response headers a page's script may read (beyond the CORS-safelisted ones)
EXPOSE_HEADERS = ", ".join(
    (
        "x-request-id",
        "x-gateway-overhead-ms",
        "x-upstream",
        *(f"x-ratelimit-{what}-{unit}" for unit in ("requests", "tokens") for what in ("limit", "remaining", "reset")),
        "retry-after",
    )
)
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


class Cors:
    """The allowed origins (``*``: any); ``middlewares`` and :meth:`install` do nothing when there are none."""

    def __init__(self, origins: Collection[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origins)
        self.middlewares: tuple[Middleware, ...] = (self._preflight,) if self.origins else ()

    def install(self, app: web.Application) -> None:
        if self.origins:
            app.on_response_prepare.append(self._stamp)

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin for a request from ``origin`` (None: not allowed)."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    @web.middleware
    async def _preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != hdrs.METH_OPTIONS or hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers:
            return await handler(request)
        unmatched = request.match_info.http_exception
        if not isinstance(unmatched, web.HTTPMethodNotAllowed):
            return await handler(request)  # no such route (404), or one that answers OPTIONS itself
        origin = request.headers.get(hdrs.ORIGIN)
        allowed = self.allow_origin(origin)
        if allowed is None:
            raise Forbidden(f"CORS: origin {origin!r} is not allowed (cors_origins)")
        requested = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "").strip()
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: allowed,
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(sorted(unmatched.allowed_methods)),
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: requested or ALLOW_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE,
                hdrs.VARY: _PREFLIGHT_VARY,
            },
        )

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        if hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in headers:
            return  # a preflight's answer
        vary = headers.get(hdrs.VARY)
        # the answer differs with the Origin (CORS headers or none), even for a request without one
        headers[hdrs.VARY] = f"{vary}, Origin" if vary and "origin" not in vary.lower() else vary or "Origin"
        allowed = self.allow_origin(request.headers.get(hdrs.ORIGIN))
        if allowed is not None:
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSE_HEADERS
