"""GET /openapi.json and GET /docs: a valid OpenAPI 3.1 document of every route, from the wire types,
served without a key, and its page, which loads nothing from anywhere."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from pydantic.json_schema import models_json_schema

from gateway.api.app import create_app
from gateway.api.audio import _FIELDS as AUDIO_FIELDS
from gateway.api.auth import OPEN_PATHS
from gateway.api.openapi import build, undocumented
from gateway.api.openapi_operations import FORMS, OPERATIONS, Spec
from gateway.api.openapi_responses import REF
from gateway.api.schema import WireModel
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, ProjectConfig
from gateway.errors import ERROR_TABLE
from tests.integration.fake_encoder import FakeEncoders, gateway_models

KEY, RECORD = new_key("team", "docs")


@pytest.fixture
async def keyed(aiohttp_client: Callable[[web.Application], Awaitable[TestClient]]) -> TestClient:
    """The gateway with a key: every route but the open ones needs it."""
    config = GatewayConfig(grpc_port=None, models=gateway_models(), projects=[ProjectConfig(id="team")], keys=[RECORD])
    return await aiohttp_client(create_app(config, lambda url: FakeEncoders()))


async def document_of(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    return body


def test_every_route_has_a_row() -> None:
    """A route whose handler has no row in OPERATIONS would be listed as x-undocumented."""
    app = create_app(GatewayConfig(grpc_port=None, models=gateway_models()))
    assert undocumented(app.router) == []
    document = build(app.router)
    assert not [op for item in document["paths"].values() for op in item.values() if op.get("x-undocumented")]


def test_a_route_without_a_row_is_listed_undocumented() -> None:
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        """Something new."""
        return web.Response()

    app.router.add_post("/v1/new", handler)
    assert undocumented(app.router) == ["POST /v1/new"]
    op = build(app.router)["paths"]["/v1/new"]["post"]
    assert op["x-undocumented"] is True and op["summary"] == "Something new."


def test_a_name_used_twice_is_refused() -> None:
    """A wire type named as a response schema would replace it (or be replaced) in components."""

    class Usage(WireModel):  # as the response schema's name
        n: int

    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/v1/clash", handler)
    with pytest.raises(ValueError, match="used twice: Usage"):
        build(app.router, {handler: Spec("Clash", "Other", {}, Usage)})


async def test_document_is_valid_openapi_3_1(keyed: TestClient) -> None:
    document = await document_of(keyed)
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: the 3.1 schema, and every $ref resolves


async def test_served_and_shown_without_a_key(keyed: TestClient) -> None:
    assert (await keyed.get("/v1/models")).status == 401
    assert (await keyed.get("/openapi.json")).status == 200
    assert (await keyed.get("/docs")).status == 200


async def test_built_once(keyed: TestClient) -> None:
    first, second = await keyed.get("/openapi.json"), await keyed.get("/openapi.json")
    assert await first.read() == await second.read()


async def test_paths_are_the_routes(keyed: TestClient) -> None:
    document = await document_of(keyed)
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in keyed.app.router.routes()
        if route.method not in ("HEAD", "OPTIONS") and route.resource is not None
    }
    listed = {(method, path) for path, item in document["paths"].items() for method in item}
    assert listed == routes
    for want in ("/v1/chat/completions", "/v1/audio/transcriptions", "/v1/models/{model_id}", "/health", "/docs"):
        assert want in document["paths"]


async def test_request_bodies_are_the_wire_types(keyed: TestClient) -> None:
    document = await document_of(keyed)
    schemas = document["components"]["schemas"]
    for spec in OPERATIONS.values():
        if isinstance(spec.body, type):
            _, defs = models_json_schema([(spec.body, "validation")], ref_template=REF)
            for name, schema in defs["$defs"].items():
                assert schemas[name] == schema, name
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    assert chat["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    audio = document["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert audio["multipart/form-data"]["schema"] == {"$ref": "#/components/schemas/TranscriptionRequest"}


def test_the_audio_form_is_the_fields_the_handler_reads() -> None:
    assert set(FORMS["TranscriptionRequest"]["properties"]) == AUDIO_FIELDS | {"file"}


async def test_errors_are_openai_errors_with_the_tables_statuses(keyed: TestClient) -> None:
    document = await document_of(keyed)
    statuses = {kind.http_status for kind in ERROR_TABLE.values()}
    responses = document["components"]["responses"]
    assert responses and {int(status) for status in responses} <= statuses
    for response in responses.values():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "Retry-After" in responses["429"]["headers"] and "Retry-After" in responses["503"]["headers"]
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "429", "500", "502", "503", "504"} <= set(chat)
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):  # the server that generated
        assert document["paths"][path]["post"]["responses"]["200"]["headers"]["x-upstream"]["required"] is True


async def test_bearer_auth_except_on_the_open_paths(keyed: TestClient) -> None:
    document = await document_of(keyed)
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert document["security"] == [{"bearerAuth": []}]
    for path, item in document["paths"].items():
        for op in item.values():
            assert (op.get("security") == []) == (path in OPEN_PATHS), path


async def test_project_paths_are_aliases(keyed: TestClient) -> None:
    document = await document_of(keyed)
    ids = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    assert len(ids) == sum(len(item) for item in document["paths"].values())  # unique
    scoped = document["paths"]["/{project_id}/v1/chat/completions"]["post"]
    assert scoped["x-alias-of"] == "post_v1_chat_completions"
    assert scoped["parameters"][0]["name"] == "project_id"
    assert "x-alias-of" not in document["paths"]["/v1/chat/completions"]["post"]
    assert document["paths"]["/v2/rerank"]["post"]["x-alias-of"] == "post_v1_rerank"


async def test_query_parameters(keyed: TestClient) -> None:
    document = await document_of(keyed)
    usage = {p["name"]: p for p in document["paths"]["/v1/usage"]["get"]["parameters"]}
    assert set(usage) == {"start", "end", "group_by", "project", "model", "batch"}
    assert all(p["in"] == "query" and not p["required"] for p in usage.values())


async def test_docs_page_is_self_contained(keyed: TestClient) -> None:
    resp = await keyed.get("/docs")
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)  # nothing from elsewhere
    document = await document_of(keyed)
    for path, item in document["paths"].items():
        for method, op in item.items():
            if "x-alias-of" not in op:
                assert f"id='{op['operationId']}'" in page, (method, path)
            else:
                assert f"<code>{method.upper()} {path}</code>" in page  # under the operation it serves
    for name in document["components"]["schemas"]:
        assert f"id='schema-{name}'" in page
