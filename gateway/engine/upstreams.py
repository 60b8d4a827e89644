"""One model on several Triton servers: where each request goes, and what happens when a server fails.

- **Routing**: the available upstream with the fewest requests in flight; ties rotate.
- **Active health**: every ``interval`` seconds each upstream is asked whether the server and the model
  are ready (gRPC ServerReady + ModelReady); the answer marks it healthy or not. A server can say
  ready and still answer nothing (a deadlocked stream handler), so an idle upstream that has
  completed no request for ``probe_interval`` seconds must also complete a 1-token generation within
  ``probe_timeout`` to stay healthy. Under traffic the requests themselves are that proof: their
  first-token and idle deadlines end them, and eject the server, if it stops answering.
- **Passive ejection**: ``eject_after`` consecutive failed requests (unavailable, broken off, timed
  out) take an upstream out at once and trigger a check; it comes back when a check begun after the
  ejection passes.
- **Retry**: a request whose upstream is unavailable, or breaks the call off (the server or its model
  process died), before its first token is retried once on another upstream. After the first token it
  is not (the client already has output): the error reaches the client as an in-band error event.
  A full queue upstream (TensorRT-LLM's max_queue_size) is retried the same way, without counting
  as a failure of that server.
  Answers about the request itself (a model error, a bad argument) are neither retried nor held
  against the server.

When no upstream is available every one is still tried: a wrong health verdict must not take a model
down. Per request this costs a scan of a short list and two gauge updates; nothing per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2

from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.base import Engine
from gateway.engine.contract import PROBE_SAMPLING, ModelContract
from gateway.engine.tensors import Tensors
from gateway.errors import GatewayError, Overloaded, UpstreamInterrupted, UpstreamTimeout, UpstreamUnavailable
from gateway.observability.metrics import (
    UPSTREAM_EJECTIONS,
    UPSTREAM_FAILURES,
    UPSTREAM_HEALTHY,
    UPSTREAM_IN_FLIGHT,
    UPSTREAM_REQUESTS,
    UPSTREAM_RETRIES,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_MIN_CHECK_GAP = 0.1  # seconds between checks triggered by failures
_READY_WAIT = 2.0  # seconds a readiness query waits for a running check before answering as last known


class Upstream:
    """One Triton server as seen by one model: load, health and its metric children."""

    __slots__ = (
        "_healthy_gauge",
        "_in_flight_gauge",
        "_requests",
        "ejected_at",
        "engine",
        "failures",
        "healthy",
        "in_flight",
        "last_ok",
    )

    def __init__(self, engine: Engine, model_id: str) -> None:
        self.engine = engine
        self.in_flight = 0
        self.healthy = False  # until the first check says otherwise
        self.failures = 0  # consecutive
        self.ejected_at: float | None = None
        # when it last produced tokens or passed a probe generation (from the start: no probe at once)
        self.last_ok = time.monotonic()
        self._in_flight_gauge = UPSTREAM_IN_FLIGHT.labels(model_id, engine.url)
        self._healthy_gauge = UPSTREAM_HEALTHY.labels(model_id, engine.url)
        self._requests = UPSTREAM_REQUESTS.labels(model_id, engine.url)
        self._healthy_gauge.set(0)

    @property
    def url(self) -> str:
        return self.engine.url

    @property
    def available(self) -> bool:
        return self.healthy and self.ejected_at is None

    def begin(self) -> None:
        self.in_flight += 1
        self._in_flight_gauge.inc()
        self._requests.inc()

    def end(self) -> None:
        self.in_flight -= 1
        self._in_flight_gauge.dec()

    def publish(self) -> None:
        self._healthy_gauge.set(1 if self.available else 0)


class UpstreamGroup:
    """The upstreams of one model, and the task that checks their health."""

    def __init__(
        self,
        model_id: str,
        triton_model: str,
        engines: list[Engine],
        interval: float = 2.0,
        eject_after: int = 3,
        probe_interval: float = 10.0,
        probe_timeout: float = 10.0,
        generates: bool = True,
    ) -> None:
        """``generates``: the model streams tokens, and an idle upstream must pass a probe generation;
        the unary models (embeddings, scores, transcription) are checked by readiness alone."""
        if not engines:
            raise ValueError(f"model {model_id!r} has no upstream")
        self.model_id = model_id
        self.triton_model = triton_model
        self.upstreams = [Upstream(e, model_id) for e in engines]
        self._interval = interval
        self._eject_after = eject_after
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._generates = generates
        self._turn = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checking: asyncio.Future[None] | None = None
        self._retries = UPSTREAM_RETRIES.labels(model_id)
        self._calls: set[asyncio.Task[dict[str, NDArray[np.generic]]]] = set()  # unary calls in flight

    # -- routing ---------------------------------------------------------------------------------

    def pick(self, exclude: Collection[Upstream] = ()) -> Upstream | None:
        """The available upstream with the fewest in flight (any upstream if none is available)."""
        ups = self.upstreams
        n = len(ups)
        self._turn = (self._turn + 1) % n
        best: Upstream | None = None
        for i in range(n):
            u = ups[(self._turn + i) % n]
            if u in exclude:
                continue
            if best is None or (u.available, -u.in_flight) > (best.available, -best.in_flight):
                best = u
        return best

    async def contract(self) -> ModelContract:
        """The model's token contract from the first upstream that answers."""
        return await self._first_answer(lambda engine: engine.contract(self.triton_model))

    async def model_config(self) -> model_config_pb2.ModelConfig:
        """The model's config from the first upstream that answers."""
        return await self._first_answer(lambda engine: engine.model_config(self.triton_model))

    async def _first_answer(self, ask: Callable[[Engine], Awaitable[T]]) -> T:
        tried: list[Upstream] = []
        while True:
            upstream = self.pick(tried)
            if upstream is None:
                raise UpstreamUnavailable(f"no Triton server of model '{self.model_id}' answers")
            try:
                return await ask(upstream.engine)
            except UpstreamUnavailable:
                if len(tried) + 1 == len(self.upstreams):
                    raise
                tried.append(upstream)

    async def infer(
        self,
        request_id: str,
        inputs: Tensors,
        outputs: tuple[str, ...],
        timeout_s: float,
        slot: AbstractAsyncContextManager[None] | None = None,
    ) -> dict[str, NDArray[np.generic]]:
        """One unary call on the chosen upstream, retried once elsewhere if that one is unavailable,
        inside ``slot`` (the model's admission) when given.

        The call is a task of the group's own: a caller that is cancelled (its client went away)
        stops waiting, while the call runs to its end (the gateway cancels only what must be
        stopped) and keeps its admission slot until then, so work a client left behind still counts
        against ``max_in_flight``. Its outcome is then only logged; :meth:`close` cancels what is left.
        """
        call = asyncio.create_task(self._admitted(request_id, inputs, outputs, timeout_s, slot))
        self._calls.add(call)
        call.add_done_callback(self._call_done)
        return await asyncio.shield(call)

    def _call_done(self, call: asyncio.Task[dict[str, NDArray[np.generic]]]) -> None:
        self._calls.discard(call)
        if not call.cancelled() and (exc := call.exception()) is not None:
            log.debug("model %s: a unary call ended with %s", self.model_id, exc)  # its caller has the error

    async def _admitted(
        self,
        request_id: str,
        inputs: Tensors,
        outputs: tuple[str, ...],
        timeout_s: float,
        slot: AbstractAsyncContextManager[None] | None,
    ) -> dict[str, NDArray[np.generic]]:
        if slot is None:
            return await self._infer(request_id, inputs, outputs, timeout_s)
        async with slot:
            return await self._infer(request_id, inputs, outputs, timeout_s)

    async def _infer(
        self, request_id: str, inputs: Tensors, outputs: tuple[str, ...], timeout_s: float
    ) -> dict[str, NDArray[np.generic]]:
        upstream = self.pick()
        assert upstream is not None  # there is at least one
        retried = False
        while True:
            upstream.begin()
            try:
                result = await upstream.engine.infer(self.triton_model, request_id, inputs, outputs, timeout_s)
                upstream.failures = 0
                upstream.last_ok = time.monotonic()
                return result
            except (UpstreamUnavailable, UpstreamInterrupted, Overloaded) as exc:
                if not isinstance(exc, Overloaded):
                    self._failed(upstream)
                other = None if retried else self.pick((upstream,))
                if other is None:
                    raise
                log.warning(
                    "request %s: %s failed (%s); retrying on %s", request_id, upstream.url, exc.message, other.url
                )
                self._retries.inc()
                retried = True
            except UpstreamTimeout:
                self._failed(upstream)
                raise
            finally:
                upstream.end()
            upstream = other

    async def generate(
        self, request: GenerateRequest, end_id: int | None, pad_id: int | None
    ) -> AsyncGenerator[Tokens, None]:
        """Token ids from the chosen upstream, retried once elsewhere if it is unavailable at the start."""
        upstream = self.pick()
        assert upstream is not None  # there is at least one
        retried = False
        while True:
            started = False
            tokens: AsyncGenerator[Tokens, None] | None = None
            upstream.begin()
            try:
                contract = await upstream.engine.contract(self.triton_model)
                tokens = upstream.engine.generate(contract, request, end_id, pad_id)
                async for ids in tokens:
                    if not started:
                        started = True
                        upstream.failures = 0
                        upstream.last_ok = time.monotonic()
                    yield ids
                upstream.failures = 0
                upstream.last_ok = time.monotonic()
                return
            except (UpstreamUnavailable, UpstreamInterrupted, Overloaded) as exc:
                if not isinstance(exc, Overloaded):  # a full queue is load, not a fault
                    self._failed(upstream)
                other = None if started or retried else self.pick((upstream,))
                if other is None:
                    raise
                log.warning(
                    "request %s: %s failed before its first token (%s); retrying on %s",
                    request.request_id,
                    upstream.url,
                    exc.message,
                    other.url,
                )
                self._retries.inc()
                retried = True
                upstream_next = other
            except UpstreamTimeout:
                self._failed(upstream)
                raise
            finally:
                upstream.end()
                if tokens is not None:
                    await tokens.aclose()  # cancels the Triton request if it is still running
            upstream = upstream_next

    # -- health ----------------------------------------------------------------------------------

    def _failed(self, upstream: Upstream) -> None:
        UPSTREAM_FAILURES.labels(self.model_id, upstream.url).inc()
        upstream.failures += 1
        if upstream.failures >= self._eject_after and upstream.ejected_at is None:
            upstream.ejected_at = time.monotonic()
            UPSTREAM_EJECTIONS.labels(self.model_id, upstream.url).inc()
            log.warning("model %s: ejected %s after %d failed requests", self.model_id, upstream.url, upstream.failures)
            upstream.publish()
        self._wake.set()

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

    async def check(self) -> None:
        """One round of active health checks; callers during a round share it."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check())
        await asyncio.shield(self._checking)

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

    async def ready(self) -> bool:
        """At least one upstream is available: checked now, or as last known if a check takes long
        (a probe generation waiting on a server that stopped answering)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.check(), _READY_WAIT)
        return any(u.available for u in self.upstreams)

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

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"health-{self.model_id}")

    async def close(self) -> None:
        for call in list(self._calls):
            call.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
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
