"""The one place the gRPC API turns exceptions into status codes, from the shared error table."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.errors import GatewayError, InternalError, MalformedRequest
from gateway.observability.metrics import REQUESTS
from gateway.usage.records import CLIENT_CLOSED

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Malformed:
    """What a request that is not its protobuf message deserializes to (see :mod:`gateway.grpcapi.wire`)."""

    __slots__ = ("message_type",)
    model = ""  # read by the request counter, as a real request's model

    def __init__(self, message_type: str) -> None:
        self.message_type = message_type


def _well_formed(request: object) -> None:
    if isinstance(request, Malformed):
        raise MalformedRequest(f"The request is not a valid {request.message_type} protobuf message")


def status_of(exc: GatewayError) -> grpc.Status:
    """The gRPC status for a gateway error: code from the table, OpenAI fields in metadata."""
    code = grpc.StatusCode[exc.kind.grpc_status]
    rich = status_pb2.Status(code=getattr(code_pb2, code.name), message=exc.message)
    if exc.retry_after is not None:
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=max(1, round(exc.retry_after))))
        detail = any_pb2.Any()
        detail.Pack(info)
        rich.details.append(detail)
    status = rpc_status.to_status(rich)
    extra = (("error-type", exc.kind.type), ("error-code", exc.kind.code or ""), ("error-param", exc.param or ""))
    return _Status(status.code, status.details, (*status.trailing_metadata, *extra))


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, Any], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def _translate(exc: Exception) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    return InternalError("The server had an error while processing your request")


def _log_unexpected(exc: Exception) -> None:
    if not isinstance(exc, GatewayError):
        log.error("unhandled error in a gRPC call", exc_info=exc)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    _log_unexpected(exc)
    status = status_of(_translate(exc))
    await context.abort(status.code, status.details, status.trailing_metadata)


def _count(service: Any, route: str, request: object, exc: Exception | asyncio.CancelledError | None) -> None:
    """The call in the request metrics (a cancelled one is not: it has no status) and in the usage ledger
    (``service.account``), with the HTTP status of its outcome: 200, the error's, 499 when cancelled."""
    if isinstance(exc, asyncio.CancelledError):
        service.account(route, CLIENT_CLOSED)
        return
    kind = None if exc is None else _translate(exc).kind
    REQUESTS.labels(route, getattr(request, "model", ""), "OK" if kind is None else kind.grpc_status).inc()
    service.account(route, 200 if kind is None else kind.http_status)


def unary(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    route = f"grpc:{method.__name__}"

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            _well_formed(request)
            response = await method(self, request, context)
        except asyncio.CancelledError as exc:  # the client went away, or its deadline passed
            _count(self, route, request, exc)
            raise
        except Exception as exc:  # the one translation point for unary calls
            _count(self, route, request, exc)
            await _abort(context, exc)
            raise  # unreachable: abort raises
        _count(self, route, request, None)
        return response

    return wrapper


def streaming(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[None]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[None]]:
    """A server-streaming method that writes its messages with ``context.write``."""
    route = f"grpc:{method.__name__}"

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> None:
        try:
            _well_formed(request)
            await method(self, request, context)
        except asyncio.CancelledError as exc:  # the client went away, or its deadline passed
            _count(self, route, request, exc)
            raise
        except Exception as exc:  # the one translation point for streaming calls
            _count(self, route, request, exc)
            await _abort(context, exc)
            return
        _count(self, route, request, None)

    return wrapper
