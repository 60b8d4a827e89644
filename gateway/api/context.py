"""Typed application state (``web.AppKey``) and small per-request helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth.keys import KeyStore, Principal
from gateway.auth.origin import AccessControl
from gateway.config import GatewayConfig
from gateway.core.job import Job
from gateway.core.models import ModelRegistry
from gateway.core.plan import Plan
from gateway.engine.base import Engine
from gateway.limits.ratelimit import RateLimiter
from gateway.usage.ledger import Ledger

if TYPE_CHECKING:  # importing the server builds the gRPC stubs: only when the API is on
    from gateway.batches.state import Batches
    from gateway.deployments.manager import DeploymentManager
    from gateway.engine.triton import TritonPool
    from gateway.grpcapi.server import GrpcServer

CONFIG = web.AppKey("config", GatewayConfig)
REGISTRY = web.AppKey("registry", ModelRegistry)
GRPC: web.AppKey[GrpcServer] = web.AppKey("grpc")  # when the gRPC API is on
KEYS = web.AppKey("keys", KeyStore)
ACCESS = web.AppKey("access", AccessControl)  # deployments' endpoints and ACLs: gateway.api.auth.access_control
PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
STARTED = web.RequestKey("started", float)  # time.monotonic() at arrival
PLAN = web.RequestKey("plan", Plan)  # set once the request is planned
JOB = web.RequestKey("job", Job)  # a request to an encoder or transcription model, once its model is known
LIMITER = web.AppKey("limiter", RateLimiter)
LEDGER = web.AppKey("ledger", Ledger)  # the usage ledger: one record per request
BATCHES: web.AppKey[Batches] = web.AppKey("batches")  # files, batches and the batch runner's wake-up
DEPLOYMENTS: web.AppKey[DeploymentManager] = web.AppKey("deployments")  # when the operator API is on
TRITON_POOL: web.AppKey[TritonPool] = web.AppKey("triton_pool")  # the Triton clients (absent in tests with fakes)
ENGINES: web.AppKey[Callable[[str], Engine]] = web.AppKey("engines")  # the engine (Triton client) of a URL


def now() -> int:
    return int(time.time())
