"""The REST transport for generation: one JSON body, or an OpenAI SSE stream.

Chat, completions and responses end here, differing only in their :class:`ResponseFormat`.
A stream's headers are sent only once the first delta exists, so a request that fails before
any token (Triton down, model not ready) still gets a proper status; after the first byte an
error becomes an in-band ``data: {"error": ...}`` event and the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Protocol

import orjson
from aiohttp import web

from gateway.api.context import PLAN
from gateway.api.formats import ResponseFormat, sse_event
from gateway.api.observe import CLIENT_GONE, stamp_headers
from gateway.core.generate import collect, generate
from gateway.core.halt import guarded
from gateway.core.plan import Plan
from gateway.core.types import Delta, Usage
from gateway.errors import GatewayError, InternalError
from gateway.observability.metrics import DISCONNECTS

log = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
}


class SSEResponse(web.StreamResponse):
    """An SSE stream whose headers leave with its first event, in one write and one TCP segment, as
    aiohttp's whole-body ``Response`` does (aiohttp >= 3.12 honours the class attribute; before, the
    headers go out at ``prepare``). :func:`_stream` writes the first event right after ``prepare``."""

    _send_headers_immediately = False


class StreamAsk(Protocol):
    """What a request body says about its response's stream (chat, completions, responses)."""

    @property
    def stream(self) -> bool: ...
    @property
    def include_usage(self) -> bool: ...
    @property
    def continuous_usage(self) -> bool: ...


async def respond(request: web.Request, fmt: ResponseFormat, plan: Plan, body: StreamAsk) -> web.StreamResponse:
    """The response to ``body``: whole or streamed, with the usage at the end (``include_usage``) or on
    every chunk (``continuous_usage_stats``) as its ``stream_options`` ask."""
    try:
        # in a task of its own: a client that goes away halts the request, never cancels a Triton read
        work = _respond(request, fmt, plan, body.stream, body.include_usage, body.continuous_usage)
        return await guarded(plan.halt, work)
    except asyncio.CancelledError:  # the client went away (handler cancellation)
        DISCONNECTS.labels(plan.model.id).inc()
        raise


async def _respond(
    request: web.Request, fmt: ResponseFormat, plan: Plan, stream: bool, include_usage: bool, continuous_usage: bool
) -> web.StreamResponse:
    if not stream:
        outputs, usage = await collect(plan)
        return web.Response(body=orjson.dumps(fmt.whole(outputs, usage)), content_type="application/json")
    deltas = generate(plan)
    counter = _RunningUsage(len(plan.choices), plan.prompt_tokens) if continuous_usage else None
    return await _stream(request, fmt, deltas, len(plan.choices), Usage(plan.prompt_tokens), include_usage, counter)


class _RunningUsage:
    """The usage so far, appended to every chunk (continuous_usage_stats)."""

    __slots__ = ("_counts", "_prompt")

    def __init__(self, n: int, prompt_tokens: int) -> None:
        self._counts = [0] * n
        self._prompt = prompt_tokens

    def count(self, delta: Delta) -> None:
        self._counts[delta.index] = delta.completion_tokens

    def stamp(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        done = sum(self._counts)
        usage = b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (
            self._prompt,
            done,
            self._prompt + done,
        )
        # every chunk is one event ending in "}\n\n": the usage goes inside its object
        return b"\n\n".join(event[:-1] + usage[:-2] for event in chunk.split(b"\n\n") if event) + b"\n\n"


async def _stream(
    request: web.Request,
    fmt: ResponseFormat,
    deltas: AsyncGenerator[Delta, None],
    n: int,
    usage: Usage,
    include_usage: bool,
    counter: _RunningUsage | None = None,
) -> web.StreamResponse:
    try:
        first = await anext(deltas)  # errors up to here get a real HTTP status
    except StopAsyncIteration:
        first = None
    except BaseException:
        await deltas.aclose()
        raise
    tail = b""  # what follows the last delta: [DONE] (and the usage) once every delta went out
    response = SSEResponse(headers=SSE_HEADERS)
    response.enable_chunked_encoding()
    stamp_headers(request, response)
    try:
        await response.prepare(request)
        opening = b"".join(fmt.opening(i) for i in range(n))
        if counter is not None:
            opening = counter.stamp(opening)
        if first is not None:
            await response.write(opening + _delta_bytes(fmt, first, usage, counter))
        else:
            await response.write(opening)
        async for delta in deltas:
            await response.write(_delta_bytes(fmt, delta, usage, counter))
        tail = fmt.closing(usage, include_usage)
    except ConnectionError:
        plan = request[PLAN]
        if not plan.halt.halted:  # else the handler's cancellation has counted it already
            log.info("client disconnected; generation stopped")
            DISCONNECTS.labels(plan.model.id).inc()
        request[CLIENT_GONE] = True
        return response
    except GatewayError as exc:
        log.warning("stream failed after the first byte: %s", exc.message)
        await write_error(response, exc, fmt)
    except Exception as exc:
        log.exception("stream failed after the first byte")
        await write_error(response, InternalError(f"internal error: {type(exc).__name__}"), fmt)
    finally:
        await deltas.aclose()
    with contextlib.suppress(ConnectionError):
        await response.write_eof(tail)  # the last events and the end of the body in one write
    return response


def _delta_bytes(fmt: ResponseFormat, delta: Delta, usage: Usage, counter: _RunningUsage | None) -> bytes:
    if delta.finish_reason is not None:
        usage.completion_tokens += delta.completion_tokens
    if delta.logprobs is not None or delta.tool_calls is not None:
        chunk = fmt.rich(delta)
    elif delta.finish_reason is None:
        chunk = fmt.delta(delta.index, delta.text)
    else:
        text = fmt.delta(delta.index, delta.text) if delta.text else b""  # before the finish: a format may count
        chunk = text + fmt.finish(delta.index, delta.finish_reason)
    if counter is None:
        return chunk
    counter.count(delta)
    return counter.stamp(chunk)


async def write_error(response: web.StreamResponse, exc: GatewayError, fmt: ResponseFormat | None = None) -> None:
    """An error in-band, once a stream has started: one ``data: {"error": ...}`` event, or the
    format's own error events (the Responses API's)."""
    with contextlib.suppress(ConnectionError):
        await response.write(sse_event(exc.body()) if fmt is None else fmt.failure(exc))
