"""The REST API as an OpenAPI 3.1 document, built once when the app starts (served by :mod:`gateway.api.docs`).

The paths come from the router, so no route is left out; what each one takes and answers comes from
:data:`gateway.api.openapi_operations.OPERATIONS`, one row per handler: its request body is the wire
type's ``model_json_schema`` (or a multipart form's schema), its answers the shapes of
:mod:`gateway.api.openapi_responses`, its errors statuses of :data:`gateway.errors.ERROR_TABLE`. A
route whose handler has no row is still listed, marked ``x-undocumented``, and the tests fail on it.
The routes that need no key are those of :data:`gateway.api.auth.OPEN_PATHS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from gateway.api.auth import OPEN_PATHS
from gateway.api.docs import DOCS, OPENAPI, render
from gateway.api.openapi_operations import FORMS, OPERATIONS, Handler, Spec
from gateway.api.openapi_responses import REF, SCHEMAS, Schema, ref
from gateway.api.version import DISTRIBUTION, gateway_version
from gateway.errors import ERROR_TABLE

METHODS = ("get", "post", "put", "patch", "delete")  # HEAD (aiohttp's twin of each GET) is left out
DESCRIPTION = (
    "OpenAI-compatible REST API served by the gateway. Every route under `/v1` is also served under "
    "`/{project_id}/v1` (the key's project), marked `x-alias-of` there. Errors are OpenAI's error object "
    "with the status, `type` and `code` of the gateway's one error table; after a stream's first byte an "
    "error arrives in-band as an event instead."
)


async def publish(app: web.Application) -> None:
    """``on_startup``: the document and its page, built once from the finished router."""
    document = build(app.router)
    app[OPENAPI] = json.dumps(document, separators=(",", ":")).encode()  # not orjson: `seed` bounds pass 64 bits
    app[DOCS] = render(document).encode()


def build(router: web.UrlDispatcher, operations: Mapping[Handler, Spec] = OPERATIONS) -> dict[str, Any]:
    """The OpenAPI document of every route of ``router``."""
    bodies = [spec.body for spec in operations.values() if isinstance(spec.body, type)]
    refs, defs = models_json_schema([(model, "validation") for model in bodies], ref_template=REF)
    wire = defs.get("$defs", {})
    clash = sorted((set(wire) & set(SCHEMAS)) | (set(wire) & set(FORMS)) | (set(SCHEMAS) & set(FORMS)))
    if clash:  # one name, two shapes: the later would replace the earlier
        raise ValueError(f"OpenAPI schema names used twice: {', '.join(clash)}")
    schemas = {**wire, **SCHEMAS, **FORMS}
    # /v1 first, then the unversioned paths, then /{project_id}/v1: a handler's first path is its own
    routes = sorted(_routes(router), key=lambda r: (r[0].startswith("/{"), not r[0].startswith("/v1/")))
    paths: dict[str, dict[str, Any]] = {}
    first: dict[Handler, str] = {}
    for path, method, handler in routes:
        spec = operations.get(handler)
        op = _undocumented(handler) if spec is None else _operation(spec, refs)
        op["operationId"] = _operation_id(method, path)
        canonical = first.setdefault(handler, op["operationId"])
        if canonical != op["operationId"]:
            op["x-alias-of"] = canonical
        if path in OPEN_PATHS:
            op["security"] = []
        parameters = [_path_parameter(name) for name in re.findall(r"{(\w+)", path)]
        parameters += [_query_parameter(name, schema) for name, schema in (spec.query if spec else {}).items()]
        if parameters:
            op["parameters"] = parameters
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Triton OpenAI gateway",
            "version": gateway_version(),
            "summary": f"{DISTRIBUTION}: OpenAI's REST API in front of NVIDIA Triton",
            "description": DESCRIPTION,
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": name} for name in dict.fromkeys(spec.tag for spec in operations.values())],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "responses": {str(status): _error(status) for status in sorted(_statuses(operations))},
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <key>`, needed only when the gateway has keys.",
                }
            },
        },
    }


def undocumented(router: web.UrlDispatcher, operations: Mapping[Handler, Spec] = OPERATIONS) -> list[str]:
    """``METHOD /path`` of each route whose handler has no row in ``operations``."""
    return [f"{m.upper()} {path}" for path, m, handler in _routes(router) if handler not in operations]


def _routes(router: web.UrlDispatcher) -> list[tuple[str, str, Handler]]:
    return [
        (route.resource.canonical, route.method.lower(), route.handler)
        for route in router.routes()
        if route.method.lower() in METHODS and route.resource is not None
    ]


def _operation(spec: Spec, refs: Mapping[tuple[Any, Any], Schema]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": spec.summary, "tags": [spec.tag]}
    if spec.description:
        op["description"] = spec.description
    if isinstance(spec.body, type):
        content = {"application/json": {"schema": refs[(spec.body, "validation")]}}
        op["requestBody"] = {"required": True, "content": content}
    elif spec.body is not None:
        op["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": ref(spec.body)}}}
    ok = {media: {"schema": schema} for media, schema in spec.ok.items()}
    responses: dict[str, Any] = {"200": {"description": "OK", "content": ok}}
    if spec.headers:
        responses["200"]["headers"] = dict(spec.headers)
    for status in spec.also:
        responses[str(status)] = {"description": "See the description.", "content": ok}
    for status in spec.errors:
        responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    op["responses"] = responses
    return op


def _undocumented(handler: Handler) -> dict[str, Any]:
    return {
        "summary": (handler.__doc__ or handler.__name__).strip().splitlines()[0],
        "x-undocumented": True,
        "responses": {"default": {"description": "Not documented yet."}},
    }


def _operation_id(method: str, path: str) -> str:
    return method + "_" + "_".join(re.findall(r"\w+", path))


def _path_parameter(name: str) -> dict[str, Any]:
    what = "The key's project: another project's path gets 403." if name == "project_id" else ""
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": what}


def _query_parameter(name: str, schema: Schema) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _statuses(operations: Mapping[Handler, Spec]) -> set[int]:
    return {status for spec in operations.values() for status in spec.errors}


def _error(status: int) -> dict[str, Any]:
    """The error answer of ``status``: OpenAI's error object, with the codes the error table gives it."""
    codes = sorted({f"`{kind.code or kind.type}`" for kind in ERROR_TABLE.values() if kind.http_status == status})
    response: dict[str, Any] = {
        "description": ", ".join(codes) or "An error.",
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
    return response
