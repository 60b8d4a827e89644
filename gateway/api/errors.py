"""The one place REST turns exceptions into OpenAI error responses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import (
    GatewayError,
    InternalError,
    MalformedRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: GatewayError) -> web.Response:
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    response = web.json_response(exc.body(), status=exc.kind.http_status, headers=headers)
    if isinstance(exc, MalformedRequest):  # what is left of the request on the wire cannot be trusted
        response.force_close()
    return response


def _from_http(exc: web.HTTPException, request: web.Request) -> GatewayError:
    if exc.status == 404:
        return RouteNotFound(f"Invalid URL ({request.method} {request.path})")
    if exc.status == 405:
        return MethodNotAllowed(f"Method {request.method} is not allowed for {request.path}")
    if exc.status == 413:
        return PayloadTooLarge("Request body is too large")
    return InternalError(exc.reason or "error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        gateway_exc = _from_http(exc, request)
        if isinstance(gateway_exc, InternalError) and exc.status < 500:
            return web.json_response(
                {"error": {"message": exc.reason, "type": "invalid_request_error", "param": None, "code": None}},
                status=exc.status,
            )
        return error_response(gateway_exc)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(InternalError("The server had an error while processing your request"))
