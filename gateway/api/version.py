"""GET /version (and /v1/version): the gateway's version, its Triton servers' and the models it serves.

Each distinct Triton server is asked for its ServerMetadata with a short timeout, at most once per
:data:`TTL` seconds; callers at the same moment share one call. A server that does not answer is
reported as such: the endpoint itself answers 200 whatever the upstreams do. Like /v1/models it
needs a key when keys exist, and lists only the models (and their servers) the key may use.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import time
import tomllib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.context import CONFIG, REGISTRY
from gateway.config import REPO_ROOT
from gateway.core.models import TASKS
from gateway.engine.base import Engine
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable

DISTRIBUTION = "triton-openai-gateway"
TTL = 10.0  # seconds a server's answer (or its silence) is reused
MAX_TIMEOUT = 2.0  # seconds a server may take to answer; less when triton_timeout is shorter

Entry = dict[str, Any]


@functools.cache
def gateway_version() -> str:
    """The installed package's version; a source tree's pyproject.toml when it is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError):
        return "unknown"
    return str(project.get("version", "unknown")) if project.get("name") == DISTRIBUTION else "unknown"


class ServerVersions:
    """What each Triton server says it is, asked at most once per ``ttl`` seconds."""

    def __init__(self, timeout: float, ttl: float = TTL) -> None:
        self._timeout = timeout
        self._ttl = ttl
        self._asked: dict[str, tuple[float, asyncio.Task[Entry]]] = {}

    async def of(self, engine: Engine) -> Entry:
        now = time.monotonic()
        asked = self._asked.get(engine.url)
        if asked is None or asked[0] <= now:
            asked = self._asked[engine.url] = (now + self._ttl, asyncio.create_task(self._ask(engine)))
        return await asyncio.shield(asked[1])  # a caller that leaves does not cancel the others' answer

    async def _ask(self, engine: Engine) -> Entry:
        try:
            async with asyncio.timeout(self._timeout + 1.0):  # the engine bounds its call; this, any engine
                meta = await engine.server_metadata(self._timeout)
        except TimeoutError:
            return {"url": engine.url, "status": "unreachable", "error": f"no answer within {self._timeout:g}s"}
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            return {"url": engine.url, "status": "unreachable", "error": exc.message}
        except GatewayError as exc:
            return {"url": engine.url, "status": "error", "error": exc.message}
        return {
            "url": engine.url,
            "status": "ok",
            "name": meta.name,
            "version": meta.version,
            "extensions": list(meta.extensions),
        }

    async def close(self) -> None:
        for _, task in self._asked.values():
            task.cancel()
        await asyncio.gather(*(task for _, task in self._asked.values()), return_exceptions=True)
        self._asked.clear()


VERSIONS = web.AppKey("server_versions", ServerVersions)


async def server_versions(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the cache of the servers' answers."""
    app[VERSIONS] = ServerVersions(min(MAX_TIMEOUT, app[CONFIG].triton_timeout))
    yield
    await app[VERSIONS].close()


async def version(request: web.Request) -> web.Response:
    models = request.app[REGISTRY].visible(principal_of(request))
    engines: dict[str, Engine] = {}
    for model in models:
        for upstream in model.upstreams.upstreams:
            engines.setdefault(upstream.url, upstream.engine)
    versions = request.app[VERSIONS]
    upstreams = await asyncio.gather(*(versions.of(engine) for engine in engines.values()))
    return web.json_response(
        {
            "name": DISTRIBUTION,
            "version": gateway_version(),
            "upstreams": upstreams,
            "models": [
                {
                    "id": model.id,
                    "task": TASKS[model.config.task].kind,
                    "upstreams": [u.url for u in model.upstreams.upstreams],
                }
                for model in models
            ],
        }
    )
