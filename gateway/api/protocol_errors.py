"""HTTP that aiohttp rejects before any handler runs, answered with OpenAI's error body.

Bytes that are not a valid HTTP request (a bad or conflicting Content-Length or Transfer-Encoding,
CR, LF or NUL inside a header, an oversize request line or header, too many headers, an unknown
method, a TLS ClientHello on the plain port) never reach the app or its middlewares: aiohttp's
protocol answers them from ``RequestHandler.handle_error`` with a plain-text body. The
:class:`GatewayRunner` serves connections with a handler that answers the same status with the
JSON body of the error table instead, and logs and counts each one as the middlewares would. It also
keeps an unreadable request body (already answered 400 by the app) out of the error log.

Use it where an ``AppRunner`` would be: ``GatewayRunner(app, handler_cancellation=True, ...)``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from gateway.api.observe import access_log
from gateway.core.ids import random_hex
from gateway.errors import GatewayError, InternalError, MalformedRequest
from gateway.observability.metrics import REQUESTS

log = logging.getLogger(__name__)

ROUTE = "malformed"  # the route label of requests that were never routed


def _reason(exc: BaseException | None, message: str | None) -> str:
    """The first line of aiohttp's message, without the echoed bytes that follow it."""
    if isinstance(exc, LineTooLong):
        return "request line or header field too long"
    lines = (exc.message if isinstance(exc, HttpProcessingError) else message or "").strip().splitlines()
    return (lines[0].split(": ", 1)[0].rstrip(":").strip() if lines else "") or "not HTTP"


def error_for(status: int, exc: BaseException | None = None, message: str | None = None) -> GatewayError:
    if status >= 500:
        return InternalError("The server had an error while processing your request")
    return MalformedRequest(f"Malformed HTTP request: {_reason(exc, message)}")


class OpenAIErrorRequestHandler(web.RequestHandler):
    """aiohttp's protocol, answering the errors it handles itself in OpenAI's format."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: a response has begun, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        error = error_for(status, exc, message)
        if status >= 500:
            log.error("unhandled error on a connection from %s", request.remote, exc_info=exc)
        else:
            log.debug("malformed HTTP from %s: %s", request.remote, error.message)
        _account(status)
        response = web.Response(body=orjson.dumps(error.body()), status=status, content_type="application/json")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            # a body that would not decode, already answered 400 by the app: aiohttp's lingering read
            # of the rest of it raises the same error again, then closes the connection
            log.debug("connection closed after an unreadable request body: %s", kw["exc_info"])
            return
        super().log_exception(*args, **kw)


def _account(status: int) -> None:
    REQUESTS.labels(ROUTE, "", str(status)).inc()
    if access_log.isEnabledFor(logging.INFO):
        line = {"request_id": f"req_{random_hex(12)}", "path": ROUTE, "status": status, "total_ms": 0.0}
        access_log.info("%s", orjson.dumps(line).decode())


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return OpenAIErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer protocol errors as :class:`OpenAIErrorRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # the app built a stock Server (the connection factory) with all its settings: have it make
        # our request handler instead of aiohttp's; nothing else about it changes
        server.__class__ = _Server
        return server
