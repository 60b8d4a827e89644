"""GET /health (the process is alive) and GET /ready (Triton reachable, every model ready)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.api.context import REGISTRY
from gateway.core.lifecycle import LIFECYCLE


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    if LIFECYCLE.draining:
        return web.json_response({"status": "draining"}, status=503)
    models = list(request.app[REGISTRY].models())
    states = await asyncio.gather(*(m.ready() for m in models))
    report = {m.id: "ready" if ok else "unavailable" for m, ok in zip(models, states, strict=True)}
    ok = all(states)
    return web.json_response({"status": "ready" if ok else "unavailable", "models": report}, status=200 if ok else 503)
