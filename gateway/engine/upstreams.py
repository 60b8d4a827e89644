"""One model on several Triton servers: where each request goes, and what happens when a server fails.
Active health checks are in :mod:`gateway.engine.health`; a group owns the checker of its upstreams.

- **Routing** (:mod:`gateway.engine.routing`): by default the available upstream with the fewest
  requests in flight (ties rotate), in the first of the model's upstream groups (in order of
  preference) that has one ready and not saturated; or by prompt prefix (``routing = "prefix"``).
  :meth:`UpstreamGroup.routed` gives views of the same upstreams routed by a policy (``model:fastest``,
  ``model:cheapest``, ``model:<group>``), sharing their load, health and measurements.
- **Measurements**: each upstream's time to the first token and time per token (EWMAs, for
  ``fastest``), taken at the first token and at the end of each request.
- **Passive ejection**: ``eject_after`` consecutive failed requests (unavailable, broken off, timed
  out) take an upstream out at once and wake the health checker; it comes back when a check begun
  after the ejection passes.
- **Retry**: a request whose upstream is unavailable, or breaks the call off (the server or its model
  process died), before its first token is retried once on another upstream. After the first token it
  is not (the client already has output): the error reaches the client as an in-band error event.
  The retry follows the route: the next server of the group, then the next group (never out of a
  pinned group).
  A full queue upstream (TensorRT-LLM's max_queue_size) is retried the same way, without counting
  as a failure of that server.
  Answers about the request itself (a model error, a bad argument) are neither retried nor held
  against the server.

When no upstream is available every one is still tried: a wrong health verdict must not take a model
down. Per request this costs a scan of a short list, two gauge updates and two meter updates (prefix
routing: the prompt's block hashes); nothing per token beyond counting the tokens of a response.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2

from gateway.core.types import GenerateRequest, RequestStats, Tokens
from gateway.engine.base import Engine
from gateway.engine.contract import ModelContract
from gateway.engine.health import HealthChecker
from gateway.engine.routing import (
    NO_KEYS,
    POLICIES,
    GroupInfo,
    Meter,
    PrefixTable,
    Route,
    group_names,
    group_tiers,
    policy_route,
)
from gateway.engine.tensors import Tensors
from gateway.errors import Overloaded, UpstreamInterrupted, UpstreamTimeout, UpstreamUnavailable
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

_NO_GROUP = GroupInfo()


class ServerLoad:
    """Requests in flight on one Triton server from this process, whatever model they are for: several
    models (deployments of one Triton model, or models sharing a server) load one server together."""

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight = 0


_SERVERS: dict[str, ServerLoad] = {}


def server_load(url: str) -> ServerLoad:
    """The load of the server at ``url`` (one per URL in this process)."""
    load = _SERVERS.get(url)
    if load is None:
        load = _SERVERS[url] = ServerLoad()
    return load


class Upstream:
    """One Triton server as seen by one model: its group, load, speed, health and metric children."""

    __slots__ = (
        "_healthy_gauge",
        "_in_flight_gauge",
        "_requests",
        "ejected_at",
        "engine",
        "failures",
        "group",
        "healthy",
        "in_flight",
        "label",
        "last_ok",
        "meter",
        "server",
    )

    def __init__(self, engine: Engine, model_id: str, group: GroupInfo = _NO_GROUP) -> None:
        self.engine = engine
        self.group = group
        # what the x-upstream header and the access log say: "group/host:port", or "host:port"
        self.label = f"{group.name}/{engine.url}" if group.name else engine.url
        self.meter = Meter()
        self.in_flight = 0  # this model's requests (a deleted deployment drains on it)
        self.server = server_load(engine.url)  # every model's: what routing and capacity go by
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

    @property
    def load(self) -> int:
        """Requests in flight on the server, for every model it serves."""
        return self.server.in_flight

    def begin(self) -> None:
        self.in_flight += 1
        self.server.in_flight += 1
        self._in_flight_gauge.inc()
        self._requests.inc()

    def end(self) -> None:
        self.in_flight -= 1
        self.server.in_flight -= 1
        self._in_flight_gauge.dec()

    def publish(self) -> None:
        self._healthy_gauge.set(1 if self.available else 0)


class UpstreamGroup:
    """The upstreams of one model, how requests are routed among them, and the checker of their health
    (a :class:`HealthChecker` it owns). A view from :meth:`routed` routes the same upstreams by another
    policy; its health methods (start, check, ready, close) act on the group it was made from."""

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
        groups: Sequence[GroupInfo] | None = None,
        routing: str = "least_in_flight",
        prefix_block_tokens: int = 64,
    ) -> None:
        """``generates``: the model streams tokens, and an idle upstream must pass a probe generation;
        the unary models (embeddings, scores, transcription) are checked by readiness alone.
        ``groups``: each engine's group (in the model's order of preference; default: none);
        ``routing``: ``least_in_flight`` or ``prefix`` (by blocks of ``prefix_block_tokens``)."""
        if not engines:
            raise ValueError(f"model {model_id!r} has no upstream")
        if groups is not None and len(groups) != len(engines):
            raise ValueError(f"model {model_id!r}: one group per upstream")
        self.model_id = model_id
        self.triton_model = triton_model
        placed = groups or [_NO_GROUP] * len(engines)
        self.upstreams = [Upstream(e, model_id, g) for e, g in zip(engines, placed, strict=True)]
        self._prefix: PrefixTable[Upstream] | None = (
            PrefixTable(prefix_block_tokens) if routing == "prefix" and generates else None
        )
        self._route: Route[Upstream] = Route("", group_tiers(self.upstreams), self._prefix)
        self._base = self  # a view's: the group it routes
        self._views: dict[str, UpstreamGroup] = {}
        self._health = HealthChecker(
            model_id, triton_model, self.upstreams, interval, probe_interval, probe_timeout, generates
        )
        self._eject_after = eject_after
        self._turn = 0
        self._retries = UPSTREAM_RETRIES.labels(model_id)
        self._calls: set[asyncio.Task[dict[str, NDArray[np.generic]]]] = set()  # unary calls in flight

    # -- routing ---------------------------------------------------------------------------------

    @property
    def policy(self) -> str:
        """The policy this group routes by: "" (the model's own), or what :meth:`routed` was given."""
        return self._route.name

    @property
    def policies(self) -> tuple[str, ...]:
        """What :meth:`routed` takes: ``fastest``, ``cheapest`` and the names of the model's groups."""
        return (*POLICIES, *(g for g in group_names(self.upstreams) if g not in POLICIES))

    def routed(self, policy: str) -> UpstreamGroup | None:
        """These upstreams routed by ``policy`` (None: not one of :attr:`policies`): a view sharing
        their load, health, measurements and prefix table, made once and kept."""
        base = self._base
        view = base._views.get(policy)
        if view is None:
            route = policy_route(policy, base.upstreams, base._prefix)
            if route is None:
                return None
            view = copy.copy(base)  # shares every list, set, metric and table of the group, and its checker
            view._route = route
            base._views[policy] = view
        return view

    def pick(self, exclude: Collection[Upstream] = (), keys: Sequence[int] = NO_KEYS) -> Upstream | None:
        """The upstream for a request by this group's route (``keys``: its prompt's prefix keys)."""
        self._turn = (self._turn + 1) % 65536
        return self._route.choose(exclude, keys, self._turn)

    async def contract(self) -> ModelContract:
        """The model's token contract from the first upstream that answers."""
        return await self._first_answer(lambda engine: engine.contract(self.triton_model))

    async def model_config(self) -> model_config_pb2.ModelConfig:
        """The model's config from the first upstream that answers."""
        return await self._first_answer(lambda engine: engine.model_config(self.triton_model))

    async def _first_answer(self, ask: Callable[[Engine], Awaitable[T]]) -> T:
        """By the model's own route, not advancing its rotation: a question about the model, not a
        request (a policy's choice, such as fastest's turn to measure an upstream, is not spent on it)."""
        route = self._base._route
        tried: list[Upstream] = []
        while True:
            upstream = route.choose(tried, NO_KEYS, self._turn)
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
            begun = time.monotonic()
            try:
                result = await upstream.engine.infer(self.triton_model, request_id, inputs, outputs, timeout_s)
                upstream.failures = 0
                upstream.last_ok = now = time.monotonic()
                upstream.meter.first_token(now - begun, now)  # a unary call's latency is its "first token"
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
        self, request: GenerateRequest, end_id: int | None, pad_id: int | None, stats: RequestStats | None = None
    ) -> AsyncGenerator[Tokens, None]:
        """Token ids from the chosen upstream, retried once elsewhere if it is unavailable at the start;
        ``stats.upstream`` names the upstream tried last (after a retry, the one that answered)."""
        keys = self._route.keys(request.prompt_ids)  # once, for the retry too
        upstream = self.pick((), keys)
        assert upstream is not None  # there is at least one
        retried = False
        while True:
            started = False
            tokens: AsyncGenerator[Tokens, None] | None = None
            upstream.begin()
            if stats is not None:
                stats.upstream = upstream.label
            first_at = 0.0
            count = 0  # tokens after the first response
            try:
                contract = await upstream.engine.contract(self.triton_model)
                begun = time.monotonic()
                tokens = upstream.engine.generate(contract, request, end_id, pad_id)
                first = await anext(tokens, None)
                if first is not None:
                    started = True
                    upstream.failures = 0
                    upstream.last_ok = first_at = time.monotonic()
                    upstream.meter.first_token(first_at - begun, first_at)
                    yield first
                    async for response in tokens:
                        count += len(response.ids)
                        yield response
                upstream.failures = 0
                upstream.last_ok = time.monotonic()
                return
            except (UpstreamUnavailable, UpstreamInterrupted, Overloaded) as exc:
                if not isinstance(exc, Overloaded):  # a full queue is load, not a fault
                    self._failed(upstream)
                other = None if started or retried else self.pick((upstream,), keys)
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
                if count:
                    upstream.meter.per_token((time.monotonic() - first_at) / count)
                if tokens is not None:
                    await tokens.aclose()  # cancels the Triton request if it is still running
            upstream = upstream_next

    # -- ejection and health ----------------------------------------------------------------------

    def _failed(self, upstream: Upstream) -> None:
        UPSTREAM_FAILURES.labels(self.model_id, upstream.url).inc()
        upstream.failures += 1
        if upstream.failures >= self._eject_after and upstream.ejected_at is None:
            upstream.ejected_at = time.monotonic()
            UPSTREAM_EJECTIONS.labels(self.model_id, upstream.url).inc()
            log.warning("model %s: ejected %s after %d failed requests", self.model_id, upstream.url, upstream.failures)
            upstream.publish()
        self._health.wake()

    async def check(self) -> None:
        """One round of active health checks; callers during a round share it."""
        await self._health.check()

    async def ready(self) -> bool:
        """At least one upstream is available: checked now, or as last known if a check takes long."""
        return await self._health.ready()

    def start(self) -> None:
        """Start checking the upstreams' health (once; a view shares its group's checker)."""
        self._health.start()

    async def close(self) -> None:
        """Cancel the unary calls left in flight and stop the health checker."""
        for call in list(self._calls):
            call.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        await self._health.close()
