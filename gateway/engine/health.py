"""Active health of one model's upstreams: the task that checks them, and what it asks.

Every ``interval`` seconds each upstream is asked whether the server and the model are ready (gRPC
ServerReady + ModelReady); the answer marks it healthy or not. A server can say ready and still
answer nothing (a deadlocked stream handler), so an idle upstream that has completed no request for
``probe_interval`` seconds must also complete a 1-token generation within ``probe_timeout`` to stay
healthy. Under traffic the requests themselves are that proof: their first-token and idle deadlines
end them, and eject the server, if it stops answering.

An upstream ejected by failed requests (:mod:`gateway.engine.upstreams`) wakes the checker at once,
and comes back when a check begun after the ejection passes. Nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.contract import PROBE_SAMPLING
from gateway.errors import GatewayError

if TYPE_CHECKING:  # the upstreams module owns a checker
    from gateway.engine.upstreams import Upstream

log = logging.getLogger(__name__)

_MIN_CHECK_GAP = 0.1  # seconds between checks triggered by failures
_READY_WAIT = 2.0  # seconds a readiness query waits for a running check before answering as last known


class HealthChecker:
    """Checks the upstreams of one model: a round now (:meth:`check`), or every ``interval`` seconds
    and whenever woken (:meth:`start`). ``generates``: the model streams tokens, and an idle upstream
    must pass a probe generation; the unary models are checked by readiness alone."""

    def __init__(
        self,
        model_id: str,
        triton_model: str,
        upstreams: Sequence[Upstream],
        interval: float = 2.0,
        probe_interval: float = 10.0,
        probe_timeout: float = 10.0,
        generates: bool = True,
    ) -> None:
        self.model_id = model_id
        self.triton_model = triton_model
        self.upstreams = upstreams
        self._interval = interval
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._generates = generates
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checking: asyncio.Future[None] | None = None

    def wake(self) -> None:
        """Check soon: an upstream failed a request (checks stay ``_MIN_CHECK_GAP`` seconds apart)."""
        self._wake.set()

    async def check(self) -> None:
        """One round of active health checks; callers during a round share it."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check())
        await asyncio.shield(self._checking)

    async def ready(self) -> bool:
        """At least one upstream is available: checked now, or as last known if a check takes long
        (a probe generation waiting on a server that stopped answering)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.check(), _READY_WAIT)
        return any(u.available for u in self.upstreams)

    def start(self) -> None:
        """Start the checking task (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"health-{self.model_id}")

    async def close(self) -> None:
        """Stop the checking task and any round in progress."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        checking, self._checking = self._checking, None
        if checking is not None and not checking.done():
            checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checking

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # never let the checker die
                log.exception("model %s: health check failed", self.model_id)
            await asyncio.sleep(_MIN_CHECK_GAP)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)

    async def _check(self) -> None:
        begun = time.monotonic()
        results = await asyncio.gather(*(self._probe(u) for u in self.upstreams))
        for upstream, ok in zip(self.upstreams, results, strict=True):
            if ok and upstream.ejected_at is not None and upstream.ejected_at < begun:
                upstream.ejected_at = None
                upstream.failures = 0
                log.info("model %s: %s is back", self.model_id, upstream.url)
            if ok != upstream.healthy:
                log.log(
                    logging.INFO if ok else logging.WARNING,
                    "model %s: %s is %s",
                    self.model_id,
                    upstream.url,
                    "healthy" if ok else "unhealthy",
                )
            upstream.healthy = ok
            upstream.publish()

    async def _probe(self, upstream: Upstream) -> bool:
        try:
            ready = await asyncio.wait_for(upstream.engine.model_ready(self.triton_model), max(self._interval, 1.0))
        except TimeoutError:
            return False
        # only an idle server is probed: under traffic its requests prove it answers, or time out
        # (first-token and idle deadlines) and eject it; a probe queued behind them would only flap
        if (
            not ready
            or not self._generates
            or upstream.in_flight
            or time.monotonic() - upstream.last_ok < self._probe_interval
        ):
            return ready
        return await self._probe_generation(upstream)

    async def _probe_generation(self, upstream: Upstream) -> bool:
        """A 1-token generation must complete: proof that the server answers, not only says ready."""
        request = GenerateRequest(
            f"health-probe-{secrets.token_hex(4)}",
            [0],
            PROBE_SAMPLING,
            first_token_timeout=self._probe_timeout,
            idle_timeout=self._probe_timeout,
        )
        tokens: AsyncGenerator[Tokens, None] | None = None
        try:
            async with asyncio.timeout(self._probe_timeout):
                contract = await upstream.engine.contract(self.triton_model)
            # bounded by the request's own deadlines: a timeout here must not cancel a task under a read
            tokens = upstream.engine.generate(contract, request, None, None)
            async for _ in tokens:
                pass
        except (TimeoutError, GatewayError) as exc:
            reason = "no answer" if isinstance(exc, TimeoutError) else exc.message
            log.warning("model %s: %s failed its probe generation: %s", self.model_id, upstream.url, reason)
            return False
        finally:
            if tokens is not None:
                await tokens.aclose()
        upstream.last_ok = time.monotonic()
        return True
