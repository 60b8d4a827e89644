"""Request ids, the JSON access log, per-route metrics and GET /metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.api.context import CONFIG, JOB, PLAN, REQUEST_ID, STARTED
from gateway.api.usage import record_request
from gateway.core.ids import random_hex
from gateway.observability.metrics import DISCONNECTS, REQUEST_DURATION, REQUESTS, child, render

access_log = logging.getLogger("gateway.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable, no spaces, bounded
CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before its response ended
CLIENT_GONE = web.RequestKey("client_gone", bool)  # set by a stream whose client left mid-way
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})  # scrapes: out of the access log with access_log_probes off


def request_id_of(request: web.Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if _CLIENT_ID.match(given) else f"req_{random_hex(12)}"


def stamp_headers(request: web.Request, response: web.StreamResponse) -> None:
    """x-request-id, the gateway's own overhead and the upstream that served (x-upstream: "group/host:port",
    or "host:port" outside groups); called before a response's headers go out."""
    response.headers["x-request-id"] = request[REQUEST_ID]
    plan = request.get(PLAN) or request.get(JOB)
    if plan is not None:
        if plan.stats.upstream:
            response.headers["x-upstream"] = plan.stats.upstream
        if plan.stats.dispatched:  # 0: refused before any upstream work
            overhead = (plan.stats.dispatched - plan.stats.started) * 1000
            response.headers["x-gateway-overhead-ms"] = f"{overhead:.3f}"
        if plan.grant is not None:
            response.headers.update(plan.grant.headers)


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[STARTED] = time.monotonic()
    request[REQUEST_ID] = request_id_of(request)
    try:
        response = await handler(request)
    except (asyncio.CancelledError, ConnectionError):  # the client went away: still logged and counted
        job = request.get(JOB)
        if job is not None:  # a generation's disconnect is counted where it halts the models (respond)
            DISCONNECTS.labels(job.model.id).inc()
        _account(request, CLIENT_CLOSED)
        raise
    if not response.prepared:
        stamp_headers(request, response)
    _account(request, CLIENT_CLOSED if request.get(CLIENT_GONE) else response.status)
    return response


def _account(request: web.Request, status: int) -> None:
    now = time.monotonic()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    plan = request.get(PLAN) or request.get(JOB)
    model = plan.model.id if plan is not None else ""
    child(REQUESTS, route, model, str(status)).inc()
    child(REQUEST_DURATION, route, model).observe(now - request[STARTED])
    record_request(request, route, status, plan)  # the usage ledger
    if not access_log.isEnabledFor(logging.INFO):
        return
    if request.path in PROBE_PATHS and not request.app[CONFIG].access_log_probes:
        return
    line: dict[str, object] = {
        "request_id": request[REQUEST_ID],
        "method": request.method,
        "path": request.path,
        "status": status,
        "total_ms": round((now - request[STARTED]) * 1000, 3),
    }
    if plan is not None:
        stats = plan.stats
        line |= {
            "id": plan.request_id,
            "model": model,
            "project": plan.project,
            "overhead_ms": round((stats.dispatched - stats.started) * 1000, 3) if stats.dispatched else None,
            "queue_ms": round(stats.queue_wait * 1000, 3),
            "ttft_ms": round((stats.first_token - stats.started) * 1000, 3) if stats.first_token else None,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "upstream": stats.upstream or None,
        }
    access_log.info("%s", orjson.dumps(line).decode())


async def metrics(request: web.Request) -> web.Response:
    body, content_type = render()
    return web.Response(body=body, headers={"Content-Type": content_type})
