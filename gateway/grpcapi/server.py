"""The gRPC server beside REST, on the same event loop: LLMGateway, grpc.health.v1, reflection.

Health is SERVING only while Triton is reachable and every model is ready (checked every
``interval`` seconds), for the whole server ("") and for the LLMGateway service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from gateway.auth.keys import KeyStore
from gateway.config import GatewayConfig
from gateway.core.lifecycle import LIFECYCLE
from gateway.core.models import ModelRegistry
from gateway.grpcapi.service import LLMGatewayService
from gateway.grpcapi.stubs import SERVICE_NAME
from gateway.grpcapi.wire import add_service
from gateway.limits.ratelimit import RateLimiter
from gateway.usage.ledger import Ledger
from gateway.workers import ports_shared

log = logging.getLogger(__name__)

_MAX_MESSAGE = 16 * 1024 * 1024
_ENVELOPE = 1024 * 1024  # a Transcribe request's fields besides its audio (prompt, model, ...)
_AUDIO_BYTES: int = GatewayConfig.model_fields["max_audio_bytes"].default
_AUDIO_SECONDS: float = GatewayConfig.model_fields["max_audio_seconds"].default


def server_options(max_audio_bytes: int = _AUDIO_BYTES) -> list[tuple[str, int]]:
    """The server's options, read when it is built: only the gateway's own --workers share the port.

    A request may be as large as a Transcribe of ``max_audio_bytes`` of audio (larger audio is then
    refused by the service with the gateway's own error); responses are not capped here (an Embed of
    many long vectors can pass 16 MB), as grpc's default.
    """
    return [
        ("grpc.max_receive_message_length", max(_MAX_MESSAGE, max_audio_bytes + _ENVELOPE)),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if ports_shared() else 0),
    ]


class GrpcServer:
    def __init__(
        self,
        registry: ModelRegistry,
        keys: KeyStore,
        limiter: RateLimiter,
        host: str,
        port: int,
        interval: float = 2.0,
        *,
        max_audio_bytes: int = _AUDIO_BYTES,
        max_audio_seconds: float = _AUDIO_SECONDS,
        ledger: Ledger | None = None,
    ) -> None:
        """``max_audio_bytes`` and ``max_audio_seconds``: the gateway config's limits on Transcribe's
        audio, as REST's (their defaults are the config's); ``ledger``: where each call is recorded."""
        self._registry = registry
        self._interval = interval
        self._server = grpc.aio.server(options=server_options(max_audio_bytes))
        service = LLMGatewayService(
            registry,
            keys,
            limiter,
            max_audio_bytes=max_audio_bytes,
            max_audio_seconds=max_audio_seconds,
            ledger=ledger,
        )
        add_service(service, self._server)
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection([SERVICE_NAME, health_name, reflection.SERVICE_NAME], self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC API to {host}:{port}")
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._check_health()  # a status exists before the first client can ask
        await self._server.start()
        self._watch = asyncio.create_task(self._watch_health())

    async def _check_health(self) -> None:
        models = list(self._registry.models())
        ready = not LIFECYCLE.draining and all(await asyncio.gather(*(m.ready() for m in models)))
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._check_health()

    async def drain(self) -> None:
        """Report NOT_SERVING at once (new calls are refused by the service)."""
        await self._check_health()

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
