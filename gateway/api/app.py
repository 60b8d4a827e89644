"""The aiohttp application: routes, middlewares and the state they share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.api.admin import add_routes as add_admin_routes
from gateway.api.admin import deployments_context
from gateway.api.audio import transcriptions, translations
from gateway.api.auth import access_control, auth_middleware
from gateway.api.batches import batch_context, cancel_batch, create_batch, get_batch, list_batches
from gateway.api.body import expect_later
from gateway.api.chat import chat_completions
from gateway.api.completions import completions
from gateway.api.context import CONFIG, ENGINES, GRPC, KEYS, LEDGER, LIMITER, REGISTRY, TRITON_POOL
from gateway.api.cors import Cors
from gateway.api.docs import docs, openapi_json
from gateway.api.embeddings import create_embeddings
from gateway.api.errors import error_middleware
from gateway.api.files import create_file, delete_file, file_content, get_file, list_files
from gateway.api.health import health, ready
from gateway.api.models import get_model, list_models
from gateway.api.observe import metrics, observe_middleware
from gateway.api.openapi import publish
from gateway.api.rerank import rerank, score
from gateway.api.responses import create_response
from gateway.api.tokenize import detokenize, tokenize
from gateway.api.usage import get_usage, ledger_context
from gateway.api.version import server_versions, version
from gateway.auth.keys import KeyStore
from gateway.config import GatewayConfig
from gateway.core.models import ModelRegistry
from gateway.engine.base import Engine
from gateway.engine.triton import TritonPool
from gateway.limits.ratelimit import RateLimiter
from gateway.limits.store import LimitStore, MemoryStore, RedisStore, SqliteStore

EngineFactory = Callable[[str], Engine]


def _engines(engine_for: EngineFactory | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        pool: TritonPool | None = None
        factory = engine_for
        if factory is None:
            pool = app[TRITON_POOL] = TritonPool(app[CONFIG].triton_timeout, app[CONFIG].triton_streams)
            factory = pool.client
        app[ENGINES] = factory
        config = app[CONFIG]
        registry = app[REGISTRY] = ModelRegistry(
            config.models,
            factory,
            config.health_check_interval,
            config.eject_after_failures,
            config.probe_interval,
            config.probe_timeout,
            config.upstream_groups,
        )
        registry.start()
        yield
        await registry.close()
        if pool is not None:
            await pool.close()

    return context


async def _limiter(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store: LimitStore
    if config.limits_redis_url:
        store = RedisStore(config.limits_redis_url)
    elif config.limits_db:
        store = SqliteStore(config.limits_db)
    else:
        store = MemoryStore()
    app[LIMITER] = RateLimiter(store)
    yield
    await app[LIMITER].close()


async def _grpc_api(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.grpc_port is None:
        yield
        return
    from gateway.grpcapi.server import GrpcServer  # builds the stubs on first use

    server = GrpcServer(
        app[REGISTRY],
        app[KEYS],
        app[LIMITER],
        config.grpc_host,
        config.grpc_port,
        max_audio_bytes=config.max_audio_bytes,
        max_audio_seconds=config.max_audio_seconds,
        ledger=app[LEDGER],
    )
    await server.start()
    app[GRPC] = server
    yield
    await server.stop()


def create_app(config: GatewayConfig, engine_for: EngineFactory | None = None) -> web.Application:
    """The gateway app; ``engine_for`` replaces Triton (one engine per URL) in tests."""
    cors = Cors(config.cors_origins)  # no origins: no middleware, no hook, no CORS headers
    # client_max_size is a backstop; read_json enforces the limit with an OpenAI error first
    app = web.Application(
        middlewares=[observe_middleware, error_middleware, *cors.middlewares, auth_middleware],
        client_max_size=config.max_body_bytes + 1,
    )
    cors.install(app)
    app[CONFIG] = config
    access_control(app)  # before the app freezes: the deployments' manager turns it on and off
    app[KEYS] = KeyStore(config)
    app.cleanup_ctx.append(ledger_context)  # first in, last out: every other part's requests are recorded
    app.cleanup_ctx.append(_limiter)
    app.cleanup_ctx.append(_engines(engine_for))
    app.cleanup_ctx.append(_grpc_api)
    app.cleanup_ctx.append(server_versions)
    app.cleanup_ctx.append(deployments_context)  # after the models: deployments join their registry
    app.cleanup_ctx.append(batch_context)  # after the models: its runner stops before them
    for base in ("/v1", "/{project_id}/v1"):  # the project-scoped path must match the key's project
        # Expect: 100-continue is answered by read_json, after auth and the size check
        app.router.add_post(f"{base}/chat/completions", chat_completions, expect_handler=expect_later)
        app.router.add_post(f"{base}/responses", create_response, expect_handler=expect_later)
        app.router.add_post(f"{base}/completions", completions, expect_handler=expect_later)
        app.router.add_post(f"{base}/embeddings", create_embeddings, expect_handler=expect_later)
        app.router.add_post(f"{base}/audio/transcriptions", transcriptions, expect_handler=expect_later)
        app.router.add_post(f"{base}/audio/translations", translations, expect_handler=expect_later)
        app.router.add_post(f"{base}/rerank", rerank, expect_handler=expect_later)
        app.router.add_post(f"{base}/score", score, expect_handler=expect_later)
        app.router.add_post(f"{base}/tokenize", tokenize, expect_handler=expect_later)
        app.router.add_post(f"{base}/detokenize", detokenize, expect_handler=expect_later)
        app.router.add_get(f"{base}/models", list_models)
        app.router.add_get(f"{base}/usage", get_usage)
        app.router.add_get(f"{base}/models/{{model_id}}", get_model)
        app.router.add_post(f"{base}/files", create_file, expect_handler=expect_later)
        app.router.add_get(f"{base}/files", list_files)
        app.router.add_get(f"{base}/files/{{file_id}}", get_file)
        app.router.add_delete(f"{base}/files/{{file_id}}", delete_file)
        app.router.add_get(f"{base}/files/{{file_id}}/content", file_content)
        app.router.add_post(f"{base}/batches", create_batch, expect_handler=expect_later)
        app.router.add_get(f"{base}/batches", list_batches)
        app.router.add_get(f"{base}/batches/{{batch_id}}", get_batch)
        app.router.add_post(f"{base}/batches/{{batch_id}}/cancel", cancel_batch)
    # vLLM's unversioned routes, which its tools call
    for path, handler in (
        ("/tokenize", tokenize),
        ("/detokenize", detokenize),
        ("/rerank", rerank),
        ("/v2/rerank", rerank),
        ("/score", score),
    ):
        app.router.add_post(path, handler, expect_handler=expect_later)
    add_admin_routes(app)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/version", version)
    app.router.add_get("/v1/version", version)
    app.router.add_get("/openapi.json", openapi_json)  # built from the finished router at startup
    app.router.add_get("/docs", docs)
    app.on_startup.append(publish)
    return app
