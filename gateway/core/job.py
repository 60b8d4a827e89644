"""A request to a unary model (encoders, transcription), for the access log, metrics and limits:
what a generation's :class:`~gateway.core.plan.Plan` is to chat and completions."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.auth.keys import Principal
from gateway.core.models import ModelRegistry, ServedModel
from gateway.core.plan import new_id
from gateway.core.types import RequestStats
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.limits.ratelimit import Grant
from gateway.observability.metrics import OVERHEAD, TOKENS, UPSTREAM_ERRORS

T = TypeVar("T")


@dataclass(slots=True)
class Job:
    """One request to an encoder model, for the access log, metrics and limits (as a generation's Plan)."""

    model: ServedModel
    request_id: str
    project: str
    stats: RequestStats
    grant: Grant | None = None
    done: bool = field(default=False)

    async def settle(self) -> None:
        """Count the tokens and settle the limits once the work has ended (or failed)."""
        if self.done:
            return
        self.done = True
        if self.grant is not None:
            await self.grant.release(self.stats.prompt_tokens)
        TOKENS.labels(self.model.id, self.project, "input_tokens").inc(self.stats.prompt_tokens)

    def dispatched(self) -> None:
        self.stats.dispatched = time.monotonic()
        OVERHEAD.labels(self.model.id).observe(self.stats.dispatched - self.stats.started)


def start_job(
    principal: Principal, registry: ModelRegistry, model_id: str, tasks: tuple[str, ...], started: float, prefix: str
) -> Job:
    """The job of a request to an encoder (or transcription) model: the model checked for this caller
    and this API; ``prefix`` starts its id."""
    model = registry.get(model_id, principal, tasks)
    return Job(model, new_id(prefix), principal.project, RequestStats(started))


async def counted(model_id: str, call: Awaitable[T]) -> T:
    """``call`` (one unary upstream call), its failure counted in gateway_upstream_errors_total."""
    try:
        return await call
    except (UpstreamError, UpstreamUnavailable, UpstreamTimeout) as exc:
        UPSTREAM_ERRORS.labels(model_id, exc.kind.grpc_status).inc()
        raise
