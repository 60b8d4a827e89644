"""Request bodies: media type, size limit, JSON, and the wire model, with errors that name the parameter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from gateway.api.schema import COMBINATION_ERROR, UNSUPPORTED_PARAMS, SamplingFields
from gateway.core.types import SamplingInput
from gateway.errors import (
    ExpectationFailed,
    InvalidJSON,
    InvalidRequest,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnsupportedParameter,
)

M = TypeVar("M", bound=BaseModel)

JSON = "application/json"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def expect_later(request: web.Request) -> None:
    """The routes' ``Expect`` handler: nothing yet. aiohttp's default answers ``100 Continue`` before
    any middleware runs; :func:`read_json` answers it once auth, media type and size have passed."""


async def accept_body(request: web.Request, media_type: str, max_bytes: int) -> None:
    """Refuse a body of another media type (415) or a declared size over ``max_bytes`` (413) before it
    is read, then answer ``Expect: 100-continue``."""
    if request.content_type != media_type:  # a missing Content-Type reads as application/octet-stream
        given = request.headers.get("Content-Type")
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {given!r}: send the body as 'Content-Type: {media_type}'"
            if given is not None
            else f"Missing Content-Type: send the body as 'Content-Type: {media_type}'"
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"Request body of {request.content_length} bytes exceeds the limit of {max_bytes} bytes")
    await continue_body(request)


async def read_json(request: web.Request, max_bytes: int) -> dict[str, Any]:
    await accept_body(request, JSON, max_bytes)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body exceeds the limit of {max_bytes} bytes") from None
    except web.RequestPayloadError as exc:  # e.g. a Content-Encoding the body is not in
        cause = exc.__cause__
        reason = cause.message if isinstance(cause, HttpProcessingError) else "the body is malformed"
        raise MalformedRequest(f"We could not read the request body: {reason}") from None
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Request body of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJSON("The request body must be a JSON object")
    return body


def parse(model: type[M], body: dict[str, Any], unsupported: Mapping[str, tuple[Any, ...]] = UNSUPPORTED_PARAMS) -> M:
    """``body`` validated as ``model``; a parameter of ``unsupported`` with a value it does not allow is
    refused first (chat and completions share OpenAI's table; the Responses API checks its own)."""
    for key, allowed in unsupported.items():
        if key in body and body[key] not in allowed and key in model.model_fields:
            raise UnsupportedParameter(f"'{key}' is not supported by this gateway", param=key)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "none", "json-or-python[json=str,python=str]"})


def _is_union_tag(part: int | str) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part.startswith("function-"))


async def continue_body(request: web.Request) -> None:
    """Answer ``Expect: 100-continue`` now that the body is wanted (see :func:`expect_later`)."""
    expect = request.headers.get("Expect")
    if expect is None:
        return
    if expect.lower() != "100-continue":
        raise ExpectationFailed(f"Unsupported Expect header: {expect!r}")
    if request.version >= HttpVersion11:
        await request.writer.write(_CONTINUE)
        request.writer.output_size = 0  # the response proper has not started


def _invalid(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    # drop pydantic's union branch tags (e.g. "str", "list[int]") so the path is the parameter's
    loc = [str(p) for p in error["loc"] if not _is_union_tag(p)]
    param = ".".join(loc) if loc else None
    kind = error["type"]
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'", param=param)
    if kind == COMBINATION_ERROR:
        return InvalidRequest(error["msg"], param=param)
    if kind.endswith("_type"):  # int_type, bool_type, string_type, ...: the strict wire types
        return InvalidRequest(f"Invalid type for '{param}': {error['msg']}", param=param)
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}", param=param)


def sampling_input(body: SamplingFields) -> SamplingInput:
    """The wire request's sampling fields as the generate path takes them."""
    logprobs, top_logprobs, logprobs_param = body.logprobs_asked
    return SamplingInput(
        max_tokens=body.token_limit,
        max_tokens_param=body.token_limit_param,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos,
        stop=body.stop_strings,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=tuple((int(token), bias) for token, bias in (body.logit_bias or {}).items()),
        stop_token_ids=tuple(body.stop_token_ids or ()),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        logprobs_param=logprobs_param,
    )
