"""The operator API, /admin/v1 (admin keys only): upstreams, the model catalogue, deployments with
their endpoints and ACLs. Scaleway's Managed Inference paths (/inference/v1beta1/regions/{region}/...)
are aliases of the same handlers.

Lists are paginated as Scaleway's are: ``page`` (from 1), ``per_page`` (at most 100, default 50),
the total in ``total_count`` and in the ``X-Total-Count`` header.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from gateway.api.admin_schema import (
    MAX_ACLS,
    MAX_ENDPOINTS,
    AclList,
    AclSpec,
    DeploymentCreate,
    DeploymentPatch,
    EndpointSpec,
    LimitsPatch,
    ListQuery,
)
from gateway.api.auth import require_admin, set_access_active
from gateway.api.body import parse, read_json
from gateway.api.context import CONFIG, DEPLOYMENTS, ENGINES, REGISTRY
from gateway.config import GatewayConfig, embedded_tokenizer_dir
from gateway.deployments import materialise
from gateway.deployments.manager import DeploymentManager
from gateway.deployments.records import Deployment, DeploymentLimits
from gateway.deployments.store import DeploymentStore, GuardedStore, RedisDeploymentStore, SqliteDeploymentStore
from gateway.engine.repository import ModelControl
from gateway.engine.upstreams import server_load
from gateway.errors import Conflict, InvalidRequest, ObjectNotFound

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def known_upstreams(config: GatewayConfig) -> list[str]:
    """Every Triton server the configuration names: its groups', then its models', in order."""
    urls: dict[str, None] = {}
    for group in config.upstream_groups:
        urls.update(dict.fromkeys(group.urls))
    for model in config.models:
        urls.update(dict.fromkeys(config.urls_of(model)))
    return list(urls)


def _group_of(config: GatewayConfig, url: str) -> tuple[str | None, int | None]:
    for group in config.upstream_groups:
        if url in group.urls:
            return group.name, group.capacity
    return None, None


async def deployments_context(app: web.Application) -> AsyncIterator[None]:
    """The store and the manager (after the models: deployments join their registry)."""
    config = app[CONFIG]
    if not config.admin_api:
        yield
        return
    store: DeploymentStore
    if config.deployments_redis_url:
        store = RedisDeploymentStore(config.deployments_redis_url)
    else:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = SqliteDeploymentStore(config.data_dir / "deployments.sqlite")
    engines = app[ENGINES]  # Triton's clients, whose model-repository calls the manager makes
    manager = DeploymentManager(
        GuardedStore(store),
        app[REGISTRY],
        lambda url: cast(ModelControl, engines(url)),
        known_upstreams(config),
        {(url, m.triton_model) for m in config.models for url in config.urls_of(m)},
        {m.id for m in config.models},
        {g.name: list(g.urls) for g in config.upstream_groups},
        interval=config.reconcile_interval,
        drain_timeout=config.drain_timeout,
        on_access_change=lambda active: set_access_active(app, active),
    )
    app[DEPLOYMENTS] = manager
    await manager.start()
    yield
    await manager.close()


def _manager(request: web.Request) -> DeploymentManager:
    require_admin(request)
    manager = request.app.get(DEPLOYMENTS)
    if manager is None:
        raise ObjectNotFound("The operator API is off (admin_api = false)")
    return manager


def _endpoint_urls(config: GatewayConfig, d: Deployment) -> list[dict[str, Any]]:
    out = []
    for ep in d.endpoints:
        if ep.visibility == "private" and config.private_host is not None:
            base = f"http://{config.private_host}:{config.private_port}/v1"
        else:
            base = f"http://{config.host}:{config.port}/v1"
        out.append({**ep.model_dump(), "url": base})
    return out


def deployment_object(config: GatewayConfig, d: Deployment) -> dict[str, Any]:
    document = d.model_dump(exclude={"model_config_override", "revision"})
    document["object"] = "deployment"
    document["size"] = len(d.placement)
    document["endpoints"] = _endpoint_urls(config, d)
    return document


async def _found(request: web.Request) -> tuple[DeploymentManager, Deployment]:
    manager = _manager(request)
    deployment_id = request.match_info["deployment_id"]
    d = await manager.store.get(deployment_id)
    if d is None:
        raise ObjectNotFound(f"No such deployment: {deployment_id}", param="deployment_id")
    return manager, d


def _json(request: web.Request, document: Any, status: int = 200) -> web.Response:
    return web.json_response(document, status=status)


def _one(request: web.Request, d: Deployment, status: int = 200) -> web.Response:
    return _json(request, deployment_object(request.app[CONFIG], d), status)


# -- upstreams and catalogue -------------------------------------------------------------------------


async def list_upstreams(request: web.Request) -> web.Response:
    manager = _manager(request)
    config = request.app[CONFIG]
    indexes = await asyncio.gather(*(manager.index(url) for url in manager.known_upstreams))
    rows = []
    for url, index in zip(manager.known_upstreams, indexes, strict=True):
        group, capacity = _group_of(config, url)
        rows.append(
            {
                "url": url,
                "group": group,
                "healthy": index is not None,
                "models_loaded": sorted(m.name for m in index or () if m.state == "READY"),
                "in_flight": server_load(url).in_flight,  # this process's requests, every model's
                "capacity": capacity,
            }
        )
    return _json(request, {"upstreams": rows, "total_count": len(rows)})


async def list_catalogue(request: web.Request) -> web.Response:
    """Every model in each Triton's repository, with its state there."""
    manager = _manager(request)
    indexes = await asyncio.gather(*(manager.index(url) for url in manager.known_upstreams))
    models: dict[str, list[dict[str, Any]]] = {}
    for url, index in zip(manager.known_upstreams, indexes, strict=True):
        for entry in index or ():
            models.setdefault(entry.name, []).append(
                {"url": url, "state": entry.state or "UNAVAILABLE", "reason": entry.reason}
            )
    rows = [
        {"name": name, "upstreams": places, "tokenizer": _default_tokenizer(request.app[CONFIG], name) is not None}
        for name, places in sorted(models.items())
    ]
    for name in materialise.names():  # on any server, loaded from the gateway's own files
        source = materialise.source_of(name) or name
        rows.append(
            {
                "name": name,
                "upstreams": [{"url": url, "state": "MATERIALISABLE", "reason": ""} for url in manager.known_upstreams],
                "tokenizer": _default_tokenizer(request.app[CONFIG], source) is not None,
            }
        )
    return _json(request, {"models": rows, "total_count": len(rows)})


# -- deployments -------------------------------------------------------------------------------------


def _default_tokenizer(config: GatewayConfig, triton_model: str) -> Path | None:
    for model in config.models:
        if model.triton_model == triton_model:
            return model.tokenizer_dir
    embedded = embedded_tokenizer_dir(materialise.REPOSITORY, triton_model)
    return embedded if (embedded / "tokenizer.json").is_file() else None


def _limits(patch: LimitsPatch, base: DeploymentLimits) -> DeploymentLimits:
    return base.model_copy(update=patch.model_dump(exclude_unset=True))


async def create_deployment(request: web.Request) -> web.Response:
    manager = _manager(request)
    config = request.app[CONFIG]
    body = parse(DeploymentCreate, await read_json(request, config.max_body_bytes))
    model_id = body.model_id or body.name
    source = materialise.source_of(body.model)
    if body.model.startswith(materialise.PREFIX) and source is None:
        raise InvalidRequest(f"The gateway cannot materialise '{body.model}' (see GET /admin/v1/models)", param="model")
    if manager.reserved(model_id):
        raise Conflict(f"The model id '{model_id}' is served by the configuration file", param="model_id")
    tokenizer = Path(body.tokenizer) if body.tokenizer else _default_tokenizer(config, source or body.model)
    if tokenizer is None:
        raise InvalidRequest(f"No tokenizer is known for '{body.model}': give 'tokenizer'", param="tokenizer")
    if not (tokenizer / "tokenizer.json").is_file():
        raise InvalidRequest(f"{tokenizer}/tokenizer.json does not exist", param="tokenizer")
    unknown = [u for u in body.upstreams if u not in manager.known_upstreams]
    if unknown:
        raise InvalidRequest(f"Unknown upstream {unknown[0]!r} (see GET /admin/v1/upstreams)", param="upstreams")
    unknown = [g for g in body.upstream_groups if g not in manager.groups]
    if unknown:
        raise InvalidRequest(f"Unknown upstream group {unknown[0]!r}", param="upstream_groups")
    max_size = body.max_size or body.min_size
    if max_size < body.min_size:
        raise InvalidRequest("max_size must be at least min_size", param="max_size")
    if any(ep.visibility == "private" for ep in body.endpoints) and config.private_host is None:
        raise InvalidRequest("A private endpoint needs a private listener (private_host)", param="endpoints")
    deployment = Deployment(
        name=body.name,
        model_id=model_id,
        triton_model=materialise.triton_name(source) if source else body.model,
        source=source,
        task=body.task,
        tokenizer_dir=str(tokenizer),
        upstreams=body.upstreams,
        upstream_groups=body.upstream_groups,
        min_size=body.min_size,
        max_size=max_size,
        limits=_limits(body.limits, DeploymentLimits()),
        tags=body.tags,
        endpoints=[ep.record() for ep in body.endpoints],
        acls=[acl.record() for acl in body.acls],
        model_config_override=body.config,
    )
    d = await manager.create(deployment)
    response = _one(request, d, 201)
    response.headers["Location"] = f"/admin/v1/deployments/{d.id}"
    return response


async def list_deployments(request: web.Request) -> web.Response:
    manager = _manager(request)
    query = parse(ListQuery, dict(request.query))
    rows, total = await manager.store.list(
        query.name, query.tag, query.status, query.order_by, query.page, query.per_page
    )
    config = request.app[CONFIG]
    response = _json(request, {"deployments": [deployment_object(config, d) for d in rows], "total_count": total})
    response.headers["X-Total-Count"] = str(total)
    return response


async def get_deployment(request: web.Request) -> web.Response:
    _, d = await _found(request)
    return _one(request, d)


async def patch_deployment(request: web.Request) -> web.Response:
    manager, d = await _found(request)
    body = parse(DeploymentPatch, await read_json(request, request.app[CONFIG].max_body_bytes))
    changes: dict[str, Any] = {}
    if body.tags is not None:
        changes["tags"] = body.tags
    if body.limits is not None:
        changes["limits"] = _limits(body.limits, d.limits)
    min_size = body.min_size or d.min_size
    max_size = body.max_size or (max(d.max_size, min_size) if body.min_size else d.max_size)
    if body.min_size is not None or body.max_size is not None:
        if max_size < min_size:
            raise InvalidRequest("max_size must be at least min_size", param="max_size")
        changes.update(min_size=min_size, max_size=max_size)
    return _one(request, await _update(manager, d, changes))


async def _update(manager: DeploymentManager, d: Deployment, changes: dict[str, Any]) -> Deployment:
    if d.status == "deleting":
        raise Conflict(f"The deployment {d.id} is being deleted", param="deployment_id")
    updated = await manager.update(d.id, changes) if changes else d
    if updated is None:
        raise ObjectNotFound(f"No such deployment: {d.id}", param="deployment_id")
    return updated


async def delete_deployment(request: web.Request) -> web.Response:
    manager, d = await _found(request)
    marked = await manager.delete(d.id)
    if marked is None:
        raise ObjectNotFound(f"No such deployment: {d.id}", param="deployment_id")
    return _one(request, marked)


# -- endpoints and ACLs --------------------------------------------------------------------------------


async def create_endpoint(request: web.Request) -> web.Response:
    manager, d = await _found(request)
    spec = parse(EndpointSpec, await read_json(request, request.app[CONFIG].max_body_bytes))
    if spec.visibility == "private" and request.app[CONFIG].private_host is None:
        raise InvalidRequest("A private endpoint needs a private listener (private_host)", param="visibility")
    if len(d.endpoints) >= MAX_ENDPOINTS:
        raise InvalidRequest(f"A deployment has at most {MAX_ENDPOINTS} endpoints", param="visibility")
    return _one(request, await _update(manager, d, {"endpoints": [*d.endpoints, spec.record()]}), 201)


async def delete_endpoint(request: web.Request) -> web.Response:
    manager, d = await _found(request)
    endpoint_id = request.match_info["endpoint_id"]
    kept = [ep for ep in d.endpoints if ep.id != endpoint_id]
    if len(kept) == len(d.endpoints):
        raise ObjectNotFound(f"No such endpoint: {endpoint_id}", param="endpoint_id")
    if not kept:
        raise InvalidRequest("A deployment keeps at least one endpoint", param="endpoint_id")
    return _one(request, await _update(manager, d, {"endpoints": kept}))


def _acls(d: Deployment) -> dict[str, Any]:
    rules = [rule.model_dump() for rule in d.acls]
    return {"acls": rules, "total_count": len(rules)}


async def list_acls(request: web.Request) -> web.Response:
    _, d = await _found(request)
    return _json(request, _acls(d))


async def put_acls(request: web.Request) -> web.Response:
    """Replace the rules (an empty list opens the deployment to every address)."""
    manager, d = await _found(request)
    body = parse(AclList, await read_json(request, request.app[CONFIG].max_body_bytes))
    return _json(request, _acls(await _update(manager, d, {"acls": [a.record() for a in body.acls]})))


async def add_acls(request: web.Request) -> web.Response:
    manager, d = await _found(request)
    raw = await read_json(request, request.app[CONFIG].max_body_bytes)
    specs = parse(AclList, raw).acls if "acls" in raw else [parse(AclSpec, raw)]
    if len(d.acls) + len(specs) > MAX_ACLS:
        raise InvalidRequest(f"A deployment has at most {MAX_ACLS} ACL rules", param="acls")
    return _json(request, _acls(await _update(manager, d, {"acls": [*d.acls, *(a.record() for a in specs)]})), 201)


async def delete_acl(request: web.Request) -> web.Response:
    manager, d = await _found(request)
    acl_id = request.match_info["acl_id"]
    kept = [rule for rule in d.acls if rule.id != acl_id]
    if len(kept) == len(d.acls):
        raise ObjectNotFound(f"No such ACL rule: {acl_id}", param="acl_id")
    return _json(request, _acls(await _update(manager, d, {"acls": kept})))


def add_routes(app: web.Application) -> None:
    for base in ("/admin/v1", "/inference/v1beta1/regions/{region}"):
        router = app.router
        router.add_get(f"{base}/upstreams", list_upstreams)
        router.add_get(f"{base}/node-types", list_upstreams)
        router.add_get(f"{base}/models", list_catalogue)
        router.add_post(f"{base}/deployments", create_deployment)
        router.add_get(f"{base}/deployments", list_deployments)
        one = f"{base}/deployments/{{deployment_id}}"
        router.add_get(one, get_deployment)
        router.add_patch(one, patch_deployment)
        router.add_delete(one, delete_deployment)
        router.add_post(f"{one}/endpoints", create_endpoint)
        router.add_delete(f"{one}/endpoints/{{endpoint_id}}", delete_endpoint)
        router.add_get(f"{one}/acls", list_acls)
        router.add_put(f"{one}/acls", put_acls)
        router.add_post(f"{one}/acls", add_acls)
        router.add_delete(f"{one}/acls/{{acl_id}}", delete_acl)
