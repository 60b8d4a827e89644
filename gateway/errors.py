"""One error tree and one table: every failure the gateway reports, and how each API shows it.

Raise a :class:`GatewayError` subclass anywhere; the REST layer turns it into OpenAI's error body
(or an in-band SSE error event once a stream has started) with the status from :data:`ERROR_TABLE`,
and the gRPC API into the status code from the same row. Foreign exceptions (grpc, pydantic,
aiohttp) are translated where they enter, never caught per route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorKind:
    http_status: int
    type: str
    code: str | None
    grpc_status: str  # name of a grpc.StatusCode member


class GatewayError(Exception):
    kind: ErrorKind = ErrorKind(500, "internal_error", "internal_error", "INTERNAL")

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind.type,
                "param": self.param,
                "code": self.kind.code,
            }
        }


class InvalidRequest(GatewayError):
    """Malformed JSON, a wrong type, a value out of range, an unknown or unsupported parameter."""

    kind = ErrorKind(400, "invalid_request_error", None, "INVALID_ARGUMENT")


class InvalidJSON(InvalidRequest):
    kind = ErrorKind(400, "invalid_request_error", "invalid_json", "INVALID_ARGUMENT")


class MalformedRequest(InvalidRequest):
    """Bytes that are not a request at all: malformed HTTP, an undecodable body or protobuf message."""

    kind = ErrorKind(400, "invalid_request_error", "malformed_request", "INVALID_ARGUMENT")


class UnsupportedParameter(InvalidRequest):
    kind = ErrorKind(400, "invalid_request_error", "unsupported_parameter", "INVALID_ARGUMENT")


class ContextLengthExceeded(InvalidRequest):
    kind = ErrorKind(400, "invalid_request_error", "context_length_exceeded", "INVALID_ARGUMENT")


class WrongModelTask(InvalidRequest):
    """A model asked for what it does not do: embeddings of a chat model, a chat with an embedding model."""

    kind = ErrorKind(400, "invalid_request_error", "model_not_supported", "INVALID_ARGUMENT")


class Unauthorized(GatewayError):
    kind = ErrorKind(401, "invalid_request_error", "invalid_api_key", "UNAUTHENTICATED")


class Forbidden(GatewayError):
    kind = ErrorKind(403, "invalid_request_error", "permission_denied", "PERMISSION_DENIED")


class ModelNotFound(GatewayError):
    kind = ErrorKind(404, "invalid_request_error", "model_not_found", "NOT_FOUND")


class RouteNotFound(GatewayError):
    kind = ErrorKind(404, "invalid_request_error", "not_found", "UNIMPLEMENTED")


class ObjectNotFound(GatewayError):
    """A file or batch that does not exist, or belongs to another project (the same answer)."""

    kind = ErrorKind(404, "invalid_request_error", "not_found", "NOT_FOUND")


class MethodNotAllowed(GatewayError):
    kind = ErrorKind(405, "invalid_request_error", "method_not_allowed", "UNIMPLEMENTED")


class Conflict(GatewayError):
    """A name or model id another deployment already has."""

    kind = ErrorKind(409, "invalid_request_error", "conflict", "ALREADY_EXISTS")


class RevisionMismatch(Conflict):
    """A change made against a revision that is no longer the current one (compare-and-set lost)."""

    kind = ErrorKind(409, "invalid_request_error", "revision_mismatch", "ABORTED")


class PayloadTooLarge(GatewayError):
    kind = ErrorKind(413, "invalid_request_error", "request_too_large", "INVALID_ARGUMENT")


class UnsupportedMediaType(GatewayError):
    kind = ErrorKind(415, "invalid_request_error", "unsupported_media_type", "INVALID_ARGUMENT")


class ExpectationFailed(GatewayError):
    """An ``Expect`` header other than ``100-continue``."""

    kind = ErrorKind(417, "invalid_request_error", "expectation_failed", "INVALID_ARGUMENT")


class RateLimited(GatewayError):
    kind = ErrorKind(429, "rate_limit_exceeded", "rate_limit_exceeded", "RESOURCE_EXHAUSTED")


class UpstreamUnavailable(GatewayError):
    """Triton cannot be reached or the model is not ready."""

    kind = ErrorKind(503, "service_unavailable", "upstream_unavailable", "UNAVAILABLE")


class StoreUnavailable(GatewayError):
    """The gateway's own durable state (the deployment store: Redis, a SQLite file) cannot be reached."""

    kind = ErrorKind(503, "service_unavailable", "store_unavailable", "UNAVAILABLE")


class Overloaded(GatewayError):
    """The upstream model's in-flight cap and wait queue are full."""

    kind = ErrorKind(503, "service_unavailable", "server_overloaded", "UNAVAILABLE")


class ShuttingDown(GatewayError):
    """This gateway process is draining: in-flight work finishes, new work goes elsewhere."""

    kind = ErrorKind(503, "service_unavailable", "shutting_down", "UNAVAILABLE")


class UpstreamTimeout(GatewayError):
    kind = ErrorKind(504, "timeout", "upstream_timeout", "DEADLINE_EXCEEDED")


class UpstreamError(GatewayError):
    """Triton answered with an error for this request."""

    kind = ErrorKind(502, "upstream_error", "upstream_error", "INTERNAL")


class UpstreamInterrupted(UpstreamError):
    """The call broke inside Triton or on the wire (gRPC INTERNAL, UNKNOWN, ABORTED, DATA_LOSS), as when
    a server or its model process dies mid-call: not an answer about this request, so it may be retried."""

    kind = ErrorKind(502, "upstream_error", "upstream_error", "INTERNAL")


class ModelLoadFailed(GatewayError):
    """Triton refused to load or unload a model (a bad config, a model its repository lacks, a server not in
    explicit model-control mode); the message carries Triton's words. 502, not 400: the gateway cannot tell
    an operator's mistake from a server's failure (out of memory, a missing backend) in what Triton says."""

    kind = ErrorKind(502, "upstream_error", "model_load_failed", "FAILED_PRECONDITION")


class InternalError(GatewayError):
    kind = ErrorKind(500, "internal_error", "internal_error", "INTERNAL")


ERROR_TABLE: dict[type[GatewayError], ErrorKind] = {
    cls: cls.kind
    for cls in (
        InvalidRequest,
        InvalidJSON,
        MalformedRequest,
        UnsupportedParameter,
        ContextLengthExceeded,
        WrongModelTask,
        Unauthorized,
        Forbidden,
        ModelNotFound,
        RouteNotFound,
        ObjectNotFound,
        MethodNotAllowed,
        Conflict,
        RevisionMismatch,
        PayloadTooLarge,
        UnsupportedMediaType,
        ExpectationFailed,
        RateLimited,
        UpstreamUnavailable,
        Overloaded,
        StoreUnavailable,
        ShuttingDown,
        UpstreamTimeout,
        UpstreamError,
        UpstreamInterrupted,
        ModelLoadFailed,
        InternalError,
    )
}
"""Every error the gateway reports, by kind: HTTP status, OpenAI type and code, gRPC status."""
