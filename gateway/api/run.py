"""Run the app: REST (and the gRPC API in its cleanup context) until a signal.

SIGINT (Ctrl-C) stops at once, cancelling what runs. SIGTERM drains: /ready turns 503 and gRPC
health NOT_SERVING immediately, new requests get 503, in-flight generations finish (up to
``drain_timeout``), then the process stops and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from gateway.api.auth import access_control
from gateway.api.context import CONFIG, GRPC
from gateway.api.protocol_errors import GatewayRunner
from gateway.config import GatewayConfig, env
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


async def listen(runner: web.AppRunner, config: GatewayConfig) -> None:
    """Start the public listener and, when configured, the private one (private endpoints answer there
    only). The auth middleware tells them apart by a connection's local port: they need distinct ones."""
    # SO_REUSEPORT only among the gateway's own workers: a second gateway must fail to bind, not split the traffic
    shared = ports_shared()
    public = web.TCPSite(runner, config.host, config.port, reuse_port=shared)
    if config.private_host is None or config.private_port is None:
        await public.start()
        return
    if config.private_port == config.port and config.port != 0:
        raise ValueError(f"private_port: {config.private_port} is also the public port; the listeners need their own")
    control = access_control(runner.app)
    control.private_ports = frozenset({config.private_port})  # before a connection can arrive on it
    private = web.TCPSite(runner, config.private_host, config.private_port, reuse_port=shared)
    await private.start()
    control.private_ports = frozenset(address[1] for address in runner.addresses)  # the bound ones (port 0)
    await public.start()
    log.info("private listener on %s", private.name)


async def serve(app: web.Application) -> None:
    config = app[CONFIG]
    access_control(app)  # made before the app freezes: the deployments and the private listener set it
    # the signals are ours before start-up begins: a SIGTERM while the app starts (a worker of --workers
    # still loading, Kubernetes scaling down) is kept and drained as soon as the app is up, never the
    # default that kills the process
    stop = asyncio.Event()
    term = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, term.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    drainer: asyncio.Task[None] | None = None
    try:
        await listen(runner, config)

        async def drain() -> None:
            await term.wait()
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

        drainer = asyncio.create_task(drain())
        await stop.wait()
    finally:
        if drainer is not None and not drainer.done():
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer
        await runner.cleanup()
