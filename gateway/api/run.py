"""Run the app: REST (and the gRPC API in its cleanup context) until a signal.

SIGINT (Ctrl-C) stops at once, cancelling what runs. SIGTERM drains: /ready turns 503 and gRPC
health NOT_SERVING immediately, new requests get 503, in-flight generations finish (up to
``drain_timeout``), then the process stops and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from gateway.api.context import CONFIG, GRPC
from gateway.api.protocol_errors import GatewayRunner
from gateway.config import env
from gateway.core.lifecycle import LIFECYCLE
from gateway.workers import ports_shared

log = logging.getLogger(__name__)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (``GATEWAY_EVENT_LOOP=asyncio`` for the stock loop)."""
    if env("GATEWAY_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


async def serve(app: web.Application) -> None:
    config = app[CONFIG]
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        # SO_REUSEPORT only among the gateway's own workers: a second gateway must fail to bind, not split the traffic
        site = web.TCPSite(runner, config.host, config.port, reuse_port=ports_shared())
        await site.start()
        stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def drain() -> None:
            log.info("SIGTERM: draining (up to %.0fs)", config.drain_timeout)
            LIFECYCLE.draining = True
            server = app.get(GRPC)
            if server is not None:
                await server.drain()
            finished = await LIFECYCLE.drain(config.drain_timeout)
            if finished:
                log.info("drained")
            else:
                log.warning("drain timeout: %d generations cut short", LIFECYCLE.active)
            stop.set()

        def on_term() -> None:
            task = asyncio.create_task(drain())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
