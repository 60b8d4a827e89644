"""A batch's input lines: each one checked as OpenAI checks it, before anything runs.

A line is ``{"custom_id": ..., "method": "POST", "url": <the batch's endpoint>, "body": {...}}``;
its body is validated with the REST route's own wire model, so a line fails exactly as the same
request would over HTTP. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from gateway.api.body import parse
from gateway.api.retrieval_schema import EmbeddingRequest
from gateway.api.schema import ChatCompletionRequest, CompletionRequest
from gateway.errors import GatewayError, UnsupportedParameter

# the endpoints a batch may target, and the wire model of their bodies
ENDPOINTS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
MAX_LINES = 50_000  # OpenAI's limit on requests per batch
MAX_CUSTOM_ID = 512


@dataclass(frozen=True, slots=True)
class LineError:
    """Why a line cannot run: ``code`` and ``message`` as OpenAI reports them; ``error`` when the
    line was a request the API would have answered with an HTTP error (its status and body)."""

    code: str
    message: str
    error: GatewayError | None = None


@dataclass(frozen=True, slots=True)
class Line:
    custom_id: str | None
    body: dict[str, Any] | None  # None when the line is invalid
    model: str | None = None
    error: LineError | None = None


def line_error(exc: GatewayError) -> LineError:
    return LineError(exc.kind.code or exc.kind.type, exc.message, exc)


def validate_body(endpoint: str, body: dict[str, Any]) -> BaseModel:
    """The body as its route's wire model (raising the route's 400), refused if it asks to stream."""
    request = parse(ENDPOINTS[endpoint], body)
    if getattr(request, "stream", False):
        raise UnsupportedParameter("'stream' is not supported in a batch", param="stream")
    return request


class LineChecker:
    """Checks a batch's lines in order (a ``custom_id`` seen before is a duplicate)."""

    def __init__(self, endpoint: str, max_bytes: int) -> None:
        self._endpoint = endpoint
        self._max_bytes = max_bytes
        self._seen: set[str] = set()

    def check(self, raw: bytes) -> Line:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Line(None, None, error=LineError("invalid_json", f"The line is not valid JSON: {exc}"))
        if not isinstance(data, dict):
            return Line(None, None, error=LineError("invalid_request", "The line must be a JSON object"))
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            message = "The line has no 'custom_id' (a non-empty string)"
            return Line(None, None, error=LineError("missing_custom_id", message))
        if len(custom_id) > MAX_CUSTOM_ID:
            message = f"'custom_id' must be at most {MAX_CUSTOM_ID} characters"
            return Line(None, None, error=LineError("invalid_custom_id", message))
        if custom_id in self._seen:
            message = f"The custom_id {custom_id!r} is used by an earlier line: each must be unique"
            return Line(custom_id, None, error=LineError("duplicate_custom_id", message))
        self._seen.add(custom_id)
        return Line(custom_id, *self._request(data, len(raw)))

    def _request(self, data: dict[str, Any], size: int) -> tuple[dict[str, Any] | None, str | None, LineError | None]:
        extra = set(data) - {"custom_id", "method", "url", "body"}
        if extra:
            return None, None, LineError("invalid_request", f"Unrecognized line field: {sorted(extra)[0]!r}")
        method = data.get("method")
        if method != "POST":
            return None, None, LineError("invalid_method", f"The method must be 'POST', not {method!r}")
        url = data.get("url")
        if url != self._endpoint:
            message = f"The url {url!r} is not the batch's endpoint {self._endpoint!r}"
            return None, None, LineError("invalid_url", message)
        body = data.get("body")
        if not isinstance(body, dict):
            return None, None, LineError("invalid_body", "The line's 'body' must be a JSON object")
        if size > self._max_bytes:
            message = f"The line is {size} bytes: a request body may have at most {self._max_bytes}"
            return None, None, LineError("request_too_large", message)
        try:
            validate_body(self._endpoint, body)
        except GatewayError as exc:
            return None, None, line_error(exc)
        model = body.get("model")
        return body, model if isinstance(model, str) else None, None
