"""Deployments made real: models loaded on Triton servers, and served by id while they are ready.

The store holds what the operator asked for; this module makes each replica's registry and Triton's
model repositories agree with it:

- **create**: the record is stored (``creating``), then loaded (``deploying``) on up to ``max_size``
  upstreams in explicit model-control mode, and served (``ready``) once at least ``min_size`` hold
  it. Triton's refusal ends in ``error`` with Triton's message.
- **update**: limits, tags, endpoints and ACLs take effect for new requests at once (requests
  running keep what they started with); a size change loads on more upstreams or releases some.
- **delete**: ``deleting``; new requests get 404 at once, running ones finish (up to the drain
  timeout), then the model is unloaded where nothing else needs it, and the record goes.
- **reconcile** (on every change notification, and every ``interval`` seconds): a replica serves
  what another created, forgets what another deleted, and loads a deployment again where a Triton
  server lost it (it restarted). A restarted gateway finds its deployments in the store and
  re-attaches to what Triton still holds.

A Triton model may hold several deployments (each its own id, limits and ACLs), and the models of
the configuration file: it is unloaded from a server only when none of them needs it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gateway.auth.access import Access
from gateway.config import ModelConfig
from gateway.core.models import ModelRegistry, ServedModel
from gateway.deployments import materialise
from gateway.deployments.records import Deployment
from gateway.deployments.store import DeploymentStore
from gateway.engine.repository import ModelControl, RepositoryModel
from gateway.errors import GatewayError, StoreUnavailable
from gateway.observability.metrics import forget_model

log = logging.getLogger(__name__)

_DRAIN_POLL = 0.05  # seconds between looks at a deleted deployment's requests in flight


def model_config(d: Deployment) -> ModelConfig:
    """The served-model settings of a deployment on its current placement."""
    limits = d.limits
    return ModelConfig(
        id=d.model_id,
        task=d.task,
        triton_urls=list(d.placement),
        upstream_groups=list(d.upstream_groups),  # routing by preference over the servers that hold it
        triton_model=d.triton_model,
        tokenizer_dir=Path(d.tokenizer_dir),
        context_length=limits.context_length,
        max_output_tokens=limits.max_output_tokens,
        default_max_tokens=min(1024, limits.max_output_tokens),
        max_in_flight=limits.max_in_flight,
        max_queue=limits.max_queue,
        queue_timeout=limits.queue_timeout,
        owned_by="deployment",
    )


def in_flight(model: ServedModel) -> int:
    return model.admission.in_flight + sum(u.in_flight for u in model.upstreams.upstreams)


class DeploymentManager:
    def __init__(
        self,
        store: DeploymentStore,
        registry: ModelRegistry,
        control_for: Callable[[str], ModelControl],
        known_upstreams: list[str],
        pinned: set[tuple[str, str]],
        configured_ids: set[str],
        groups: dict[str, list[str]],
        interval: float = 5.0,
        drain_timeout: float = 30.0,
        on_access_change: Callable[[bool], None] | None = None,
    ) -> None:
        """``known_upstreams``: where a deployment that names none may go, in order; ``pinned``: the
        (URL, Triton model) pairs of the configuration file's models, never unloaded; ``configured_ids``:
        their model ids, which no deployment may take; ``groups``: the upstream groups' servers."""
        self.store = store
        self._registry = registry
        self._control_for = control_for
        self.known_upstreams = known_upstreams
        self._pinned = pinned
        self._configured_ids = configured_ids
        self.groups = groups
        self._interval = interval
        self._drain_timeout = drain_timeout
        self._on_access_change = on_access_change
        self._served: dict[str, tuple[int, ServedModel]] = {}  # deployment id -> (revision, served model)
        self._work: dict[str, asyncio.Task[None]] = {}  # deployment id -> its create/scale/delete work
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one reconcile pass at a time
        self._resumed = True  # False while the store was unreachable since start-up

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.reconcile()  # what was ready is served at once, and checked by resume()
            await self.resume()
        except StoreUnavailable as exc:  # serve the configured models; the periodic pass tries again
            log.error("deployments: %s; retrying every %.0f s", exc.message, self._interval)
            self._resumed = False
        self._spawn(self._watch(), "deployments-watch")
        self._spawn(self._tick(), "deployments-reconcile")

    async def close(self) -> None:
        tasks = [*self._tasks, *self._work.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, served in self._served.values():
            self._registry.remove(served.id)
            await served.upstreams.close()
        self._served.clear()
        await self.store.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        while True:
            try:
                async for _ in self.store.changes():
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store went away for a moment: the periodic pass covers it
                log.exception("deployments: change notifications failed; retrying")
                await asyncio.sleep(self._interval)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if not self._resumed:  # the store was away at start-up
                    await self.resume()
                    self._resumed = True
                await self.reconcile(check_triton=True)
            except Exception:
                log.exception("deployments: reconcile failed")

    # -- operator actions ------------------------------------------------------------------------

    def reserved(self, model_id: str) -> bool:
        """A model id the configuration file serves (a deployment may not take it)."""
        return model_id in self._configured_ids

    async def create(self, deployment: Deployment) -> Deployment:
        stored = await self.store.create(deployment)
        self._start_work(stored.id, self._deploy(stored.id))
        return stored

    async def update(self, deployment_id: str, changes: dict[str, Any]) -> Deployment | None:
        updated = await self.store.update(deployment_id, None, **changes)
        if updated is None:
            return None
        if "min_size" in changes or "max_size" in changes:
            self._start_work(updated.id, self._deploy(updated.id))
        await self.reconcile()
        return updated

    async def delete(self, deployment_id: str) -> Deployment | None:
        marked = await self.store.update(deployment_id, None, status="deleting")
        if marked is None:
            return None
        entry = self._served.pop(deployment_id, None)
        if entry is not None:
            self._registry.remove(entry[1].id)  # new requests: 404 from now on
            self._publish_access()
        self._start_work(deployment_id, self._teardown(marked, entry[1] if entry else None))
        return marked

    def _start_work(self, deployment_id: str, coro: Any) -> None:
        previous = self._work.get(deployment_id)
        task = asyncio.create_task(self._after(previous, coro), name=f"deployment-{deployment_id}")
        self._work[deployment_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._work.get(deployment_id) is t:
                del self._work[deployment_id]
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("deployment %s: %s", deployment_id, exc, exc_info=exc)

        task.add_done_callback(done)

    @staticmethod
    async def _after(previous: asyncio.Task[None] | None, coro: Any) -> None:
        """One piece of work per deployment at a time, in the order asked."""
        if previous is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(previous)
        await coro

    # -- placement -------------------------------------------------------------------------------

    def _candidates(self, d: Deployment) -> list[str]:
        """Where ``d`` may be loaded, in order of preference."""
        if d.upstream_groups:
            in_groups = dict.fromkeys(url for name in d.upstream_groups for url in self.groups.get(name, ()))
            return [url for url in in_groups if not d.upstreams or url in d.upstreams]
        return list(d.upstreams or self.known_upstreams)

    def _needed(self, url: str, triton_model: str, deployments: Iterable[Deployment], leaving: str) -> bool:
        """Whether a Triton model on ``url`` still serves anything once deployment ``leaving`` lets go."""
        if (url, triton_model) in self._pinned:
            return True
        return any(
            d.id != leaving and d.triton_model == triton_model and url in d.placement and d.status != "deleting"
            for d in deployments
        )

    async def index(self, url: str) -> list[RepositoryModel] | None:
        """What the server's repository holds (None: the server does not answer)."""
        try:
            return await self._control_for(url).repository_index()
        except GatewayError:
            return None

    async def _holds(self, url: str, d: Deployment) -> bool:
        try:
            return await self._control_for(url).model_ready(d.triton_model)
        except GatewayError:
            return False

    async def _load(self, url: str, d: Deployment) -> str | None:
        """Load ``d``'s Triton model on ``url`` unless it is ready there; Triton's reason if it fails."""
        if d.model_config_override is None and await self._holds(url, d):
            return None
        config, files = d.model_config_override, None
        if d.source is not None:  # the gateway's own model: its config and code go with the request
            config, files = materialise.materials(d.source)
            config = d.model_config_override or config
        try:
            await self._control_for(url).load_model(d.triton_model, config, files)
        except GatewayError as exc:
            return f"{url}: {exc.message}"
        return None

    async def _deploy(self, deployment_id: str) -> None:
        """Load (or release) until between min_size and max_size upstreams hold the model."""
        d = await self.store.get(deployment_id)
        if d is None or d.status == "deleting":
            return
        if d.status in ("creating", "error"):
            d = await self.store.update(d.id, None, status="deploying", error_message=None) or d
        placement = [url for url in d.placement if url in self._candidates(d)]
        held = [url for url in placement if await self._holds(url, d)]
        errors: list[str] = []
        for url in self._candidates(d):
            if len(held) >= d.max_size:
                break
            if url in held:
                continue
            reason = await self._load(url, d)
            if reason is None:
                held.append(url)
            else:
                errors.append(reason)
        released = held[d.max_size :]
        held = held[: d.max_size]
        if len(held) >= d.min_size:
            status, message = "ready", None
        else:
            status = "error"
            message = "; ".join(errors) or f"only {len(held)} of the {d.min_size} upstreams needed hold the model"
        before = self._served.get(d.id)
        if status == "ready":  # served here before the store says so: a client that reads `ready` is served
            async with self._lock:
                self._serve(d.model_copy(update={"placement": held}))
                self._publish_access()
        d = await self.store.update(d.id, None, status=status, error_message=message, placement=held) or d
        log.info("deployment %s (%s): %s on %s", d.name, d.model_id, d.status, ", ".join(held) or "nothing")
        await self.reconcile()
        if released:
            if before is not None:
                await self._quiet(before[1])  # the requests on the servers it leaves finish first
            await self._release(d, released)

    async def _release(self, d: Deployment, urls: list[str]) -> None:
        """Unload ``d``'s Triton model from ``urls`` where nothing else needs it (after a scale-down
        or a delete; the requests running there have finished or had the drain timeout)."""
        others = await self.store.all()
        for url in urls:
            if self._needed(url, d.triton_model, others, d.id):
                continue
            try:
                await self._control_for(url).unload_model(d.triton_model)
                log.info("deployment %s: unloaded %s from %s", d.name, d.triton_model, url)
            except GatewayError as exc:
                log.warning("deployment %s: could not unload %s from %s: %s", d.name, d.triton_model, url, exc.message)

    async def _teardown(self, d: Deployment, served: ServedModel | None) -> None:
        if served is not None:
            await self._drain(served, gone=True)
        await self._release(d, list(d.placement))
        await self.store.delete(d.id)
        log.info("deployment %s (%s): deleted", d.name, d.model_id)

    async def _quiet(self, served: ServedModel) -> None:
        """Until the requests that started on ``served`` finish (at most the drain timeout)."""
        deadline = time.monotonic() + self._drain_timeout
        while in_flight(served) and time.monotonic() < deadline:  # noqa: ASYNC110 (counters, no event)
            await asyncio.sleep(_DRAIN_POLL)

    async def _drain(self, served: ServedModel, gone: bool = False) -> None:
        """Until ``served``'s requests finish, then its health checks stop; ``gone``: its model id is no
        longer served (deleted), and its metric series go too."""
        await self._quiet(served)
        await served.upstreams.close()
        if gone:
            for url in served.config.upstreams:  # whoever unloads its model, this replica's streams let go of it
                self._control_for(url).let_go()
        if gone and self._registry.lookup(served.id) is None:
            forget_model(served.id)

    # -- serving ---------------------------------------------------------------------------------

    def _serve(self, d: Deployment) -> None:
        """Serve ``d`` as stored now (its group of upstreams is kept while its placement is unchanged)."""
        entry = self._served.get(d.id)
        if entry is not None and entry[0] == d.revision:
            return
        old = entry[1] if entry is not None else None
        cfg = model_config(d)
        access = Access(d.endpoints, d.acls)
        if old is not None and old.config == cfg and old.access == access:
            self._served[d.id] = (d.revision, old)  # nothing it serves with changed: keep its admission
            return
        keep = old is not None and old.config.upstreams == cfg.upstreams and old.id == cfg.id
        served = self._registry.build(cfg, access, old.upstreams if keep and old is not None else None)
        if old is not None and old.id != served.id:
            self._registry.remove(old.id)
        self._registry.add(served)
        self._served[d.id] = (d.revision, served)
        if old is not None and not keep:
            self._spawn(self._drain(old), f"drain-{d.id}")

    async def reconcile(self, check_triton: bool = False) -> None:
        """Make this replica serve exactly the ready deployments of the store; with ``check_triton``,
        also load again where a server lost a ready deployment's model."""
        async with self._lock:
            deployments = await self.store.all()
            ready = {d.id: d for d in deployments if d.status == "ready"}
            for deployment_id in [i for i in self._served if i not in ready]:  # deleted by another replica
                served = self._served.pop(deployment_id)[1]
                self._registry.remove(served.id)
                self._spawn(self._drain(served, gone=True), f"drain-{deployment_id}")
            for d in ready.values():
                self._serve(d)
            self._publish_access()
            for d in deployments:
                if d.status in ("creating", "deploying") and d.id not in self._work and time.time() - d.updated_at > 60:
                    self._start_work(d.id, self._deploy(d.id))  # its replica went away mid-load
        if check_triton:
            for d in ready.values():
                if d.id not in self._work and not all([await self._holds(url, d) for url in d.placement]):
                    log.warning("deployment %s: an upstream lost %s; loading it again", d.name, d.triton_model)
                    self._start_work(d.id, self._deploy(d.id))

    async def resume(self) -> None:
        """At start-up: every stored deployment is loaded again where Triton lost it, and served."""
        for d in await self.store.all():
            if d.status == "deleting":
                self._start_work(d.id, self._teardown(d, None))
            elif d.status != "error":
                self._start_work(d.id, self._deploy(d.id))

    def _publish_access(self) -> None:
        if self._on_access_change is not None:
            self._on_access_change(bool(self._served))
