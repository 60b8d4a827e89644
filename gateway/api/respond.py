"""The REST transport for generation: one JSON body, or an OpenAI SSE stream.

Both chat and completions end here, differing only in their :class:`ResponseFormat`.
A stream's headers are sent only once the first delta exists, so a request that fails before
any token (Triton down, model not ready) still gets a proper status; after the first byte an
error becomes an in-band ``data: {"error": ...}`` event and the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

import orjson
from aiohttp import web

from gateway.api.context import PLAN
from gateway.api.formats import SSE_DONE, ResponseFormat, sse_event
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


async def respond(
    request: web.Request, fmt: ResponseFormat, plan: Plan, *, stream: bool, include_usage: bool
) -> web.StreamResponse:
    try:
        # in a task of its own: a client that goes away halts the request, never cancels a Triton read
        return await guarded(plan.halt, _respond(request, fmt, plan, stream, include_usage))
    except asyncio.CancelledError:  # the client went away (handler cancellation)
        DISCONNECTS.labels(plan.model.id).inc()
        raise


async def _respond(
    request: web.Request, fmt: ResponseFormat, plan: Plan, stream: bool, include_usage: bool
) -> web.StreamResponse:
    if not stream:
        texts, reasons, usage = await collect(plan)
        return web.Response(body=orjson.dumps(fmt.whole(texts, reasons, usage)), content_type="application/json")
    return await _stream(request, fmt, generate(plan), len(plan.choices), Usage(plan.prompt_tokens), include_usage)


async def _stream(
    request: web.Request,
    fmt: ResponseFormat,
    deltas: AsyncGenerator[Delta, None],
    n: int,
    usage: Usage,
    include_usage: bool,
) -> web.StreamResponse:
    try:
        first = await anext(deltas)  # errors up to here get a real HTTP status
    except StopAsyncIteration:
        first = None
    except BaseException:
        await deltas.aclose()
        raise
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.enable_chunked_encoding()
    stamp_headers(request, response)
    try:
        await response.prepare(request)
        opening = b"".join(fmt.opening(i) for i in range(n))
        if first is not None:
            await response.write(opening + _delta_bytes(fmt, first, usage))
        else:
            await response.write(opening)
        async for delta in deltas:
            await response.write(_delta_bytes(fmt, delta, usage))
        tail = fmt.usage(usage) + SSE_DONE if include_usage else SSE_DONE
        await response.write(tail)
    except ConnectionError:
        plan = request[PLAN]
        if not plan.halt.halted:  # else the handler's cancellation has counted it already
            log.info("client disconnected; generation stopped")
            DISCONNECTS.labels(plan.model.id).inc()
        request[CLIENT_GONE] = True
        return response
    except GatewayError as exc:
        log.warning("stream failed after the first byte: %s", exc.message)
        await _write_error(response, exc)
    except Exception as exc:
        log.exception("stream failed after the first byte")
        await _write_error(response, InternalError(f"internal error: {type(exc).__name__}"))
    finally:
        await deltas.aclose()
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def _delta_bytes(fmt: ResponseFormat, delta: Delta, usage: Usage) -> bytes:
    if delta.finish_reason is None:
        return fmt.delta(delta.index, delta.text)
    usage.completion_tokens += delta.completion_tokens
    finish = fmt.finish(delta.index, delta.finish_reason)
    return fmt.delta(delta.index, delta.text) + finish if delta.text else finish


async def _write_error(response: web.StreamResponse, exc: GatewayError) -> None:
    with contextlib.suppress(ConnectionError):
        await response.write(sse_event(exc.body()))
