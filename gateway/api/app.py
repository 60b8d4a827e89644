"""The aiohttp application: routes, middlewares and the state they share."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.api.chat import chat_completions
from gateway.api.completions import completions
from gateway.api.context import CONFIG, POOL, REGISTRY
from gateway.api.errors import error_middleware
from gateway.api.health import health, ready
from gateway.api.models import get_model, list_models
from gateway.config import GatewayConfig
from gateway.core.models import ModelRegistry
from gateway.engine.triton import TritonPool


async def _triton(app: web.Application) -> AsyncIterator[None]:
    pool = TritonPool(app[CONFIG].triton_timeout)
    app[POOL] = pool
    app[REGISTRY] = ModelRegistry(app[CONFIG].models, pool.client)
    yield
    await pool.close()


def create_app(config: GatewayConfig) -> web.Application:
    # client_max_size is a backstop; read_json enforces the limit with an OpenAI error first
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes + 1)
    app[CONFIG] = config
    app.cleanup_ctx.append(_triton)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app
