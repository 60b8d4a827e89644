"""Deployments' endpoints and ACLs over REST, and the admin API's key: an ACL refuses with 403 before any
upstream call; a private endpoint answers on the private listener only; an endpoint without auth takes
requests without a key (nothing else does); X-Forwarded-For counts only from a trusted proxy; /admin needs
an admin key (X-Auth-Token or Authorization), or a loopback client with auth off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.api.auth import access_control, principal_of, require_admin, set_access_active
from gateway.api.context import REGISTRY
from gateway.api.run import listen
from gateway.auth.access import Access
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, KeyConfig, ModelConfig, ProjectConfig
from gateway.deployments.records import AclRule, Endpoint
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL, REPLY
from tests.integration.fake_engine import FakeEngine

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]
KEY, KEY_RECORD = new_key("team-a", "project key")
ADMIN, ADMIN_RECORD = new_key("team-a", "admin key")
ADMIN_ROUTE = "/admin/v1/_test_caller"  # a route of this test's own (the admin API's handlers are elsewhere)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}]}


def model_config(model_id: str) -> ModelConfig:
    return ModelConfig(id=model_id, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_output_tokens=64)


def gateway_config(keys: list[KeyConfig] | None = None, **settings: object) -> GatewayConfig:
    admin = ADMIN_RECORD.model_copy(update={"admin": True})
    return GatewayConfig.model_validate(
        {
            "grpc_port": None,
            "admin_api": False,  # no deployments' manager: this test registers the served models itself
            "models": [model_config(MODEL)],
            "projects": [ProjectConfig(id="team-a")],
            "keys": [KEY_RECORD, admin] if keys is None else keys,
            **settings,
        }
    )


async def admin_caller(request: web.Request) -> web.Response:
    principal = require_admin(request)
    assert principal_of(request) is principal  # the middleware already required it
    return web.json_response({"key": principal.key_name})


def gateway(config: GatewayConfig, engine: FakeEngine) -> web.Application:
    app = create_app(config, lambda url: engine)
    app.router.add_get(ADMIN_ROUTE, admin_caller)
    set_access_active(app, True)  # as the deployments' manager does when it serves deployments
    return app


def deploy(app: web.Application, model_id: str, access: Access) -> None:
    registry = app[REGISTRY]
    registry.add(registry.build(model_config(model_id), access))


async def test_acl_refuses_before_any_work(aiohttp_client: ClientFactory, engine: FakeEngine) -> None:
    client = await aiohttp_client(gateway(gateway_config(), engine))
    deploy(client.app, "acl-out", Access([Endpoint()], [AclRule(ip="10.0.0.0/8", description="office")]))
    deploy(client.app, "acl-in", Access([Endpoint()], [AclRule(ip="127.0.0.1", description="this host")]))
    resp = await client.post("/v1/chat/completions", json=chat("acl-out"), headers=bearer(KEY))
    assert resp.status == 403
    error = (await resp.json())["error"]
    assert error["code"] == "permission_denied" and "127.0.0.1" in error["message"]
    resp = await client.post("/v1/embeddings", json={"model": "acl-out", "input": "x"}, headers=bearer(KEY))
    assert resp.status == 403
    assert engine.requests == []  # refused before any upstream call
    resp = await client.post("/v1/chat/completions", json=chat("acl-in"), headers=bearer(KEY))
    assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == REPLY
    assert len(engine.requests) == 1
    models = await (await client.get("/v1/models", headers=bearer(KEY))).json()
    assert sorted(m["id"] for m in models["data"]) == sorted(["acl-in", MODEL])
    assert (await client.get("/v1/models/acl-out", headers=bearer(KEY))).status == 403


async def test_disable_auth_endpoint(aiohttp_client: ClientFactory, engine: FakeEngine) -> None:
    client = await aiohttp_client(gateway(gateway_config(), engine))
    deploy(client.app, "open", Access([Endpoint(disable_auth=True)]))
    deploy(client.app, "keyed", Access([Endpoint()]))
    deploy(client.app, "open-private", Access([Endpoint(visibility="private", disable_auth=True)]))
    resp = await client.post("/v1/chat/completions", json=chat("open"))
    assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == REPLY
    assert (await client.post("/v1/chat/completions", json=chat("open"), headers=bearer(KEY))).status == 200
    for other in ("keyed", MODEL, "open-private", "no-such-model"):
        resp = await client.post("/v1/chat/completions", json=chat(other))
        assert resp.status == 401, other
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["open"]
    assert (await client.get("/v1/models/open")).status == 200
    assert (await client.get(f"/v1/models/{MODEL}")).status == 401
    # every other route still needs a key
    assert (await client.get("/v1/files")).status == 401
    assert (await client.get("/v1/usage")).status == 401
    assert (await client.post("/team-a/v1/chat/completions", json=chat("open"))).status == 401
    assert (await client.get(ADMIN_ROUTE)).status == 401
    # a wrong key is still a wrong key
    assert (await client.post("/v1/chat/completions", json=chat("open"), headers=bearer(KEY + "x"))).status == 401


async def test_without_disable_auth_a_keyless_request_is_refused_as_before(
    aiohttp_client: ClientFactory, engine: FakeEngine
) -> None:
    client = await aiohttp_client(gateway(gateway_config(), engine))
    deploy(client.app, "open-private", Access([Endpoint(visibility="private", disable_auth=True)]))
    resp = await client.post("/v1/chat/completions", json=chat("open-private"))  # nothing open on this listener
    assert resp.status == 401
    assert (await client.get("/v1/models")).status == 401


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "status"),
    [
        (["127.0.0.1"], "203.0.113.9", 200),  # the trusted proxy names an allowed client
        (["127.0.0.1"], "127.0.0.1, 203.0.113.9", 200),
        (["127.0.0.1"], "203.0.113.9, 198.51.100.1", 403),  # the client is the rightmost untrusted hop
        (["127.0.0.1"], None, 403),  # the proxy itself is not in the ACL
        (["127.0.0.1"], "garbage", 403),  # malformed: the proxy's own address
        (["10.0.0.0/8"], "203.0.113.9", 403),  # the peer is no trusted proxy: the header is ignored
        ([], "203.0.113.9", 403),
    ],
)
async def test_forwarded_for_only_from_a_trusted_proxy(
    aiohttp_client: ClientFactory, engine: FakeEngine, trusted: list[str], forwarded_for: str | None, status: int
) -> None:
    client = await aiohttp_client(gateway(gateway_config(trusted_proxies=trusted), engine))
    deploy(client.app, "dep", Access([Endpoint()], [AclRule(ip="203.0.113.0/24")]))
    headers = bearer(KEY) | ({"X-Forwarded-For": forwarded_for} if forwarded_for else {})
    resp = await client.post("/v1/chat/completions", json=chat("dep"), headers=headers)
    assert resp.status == status


@pytest.fixture
async def two_listeners(engine: FakeEngine) -> AsyncIterator[tuple[web.Application, str, str]]:
    """The app on a public and a private listener (both 127.0.0.1, ports of their own): their base URLs."""
    config = gateway_config(host="127.0.0.1", port=0, private_host="127.0.0.1", private_port=0)
    app = create_app(config, lambda url: engine)
    control = access_control(app)  # as run.serve does before the app starts
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await listen(runner, config)
        (private_port,) = control.private_ports
        (public_port,) = {address[1] for address in runner.addresses} - control.private_ports
        assert control.active  # a private listener turns access control on
        yield app, f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{private_port}"
    finally:
        await runner.cleanup()


async def test_private_endpoint_only_on_the_private_listener(
    two_listeners: tuple[web.Application, str, str], engine: FakeEngine
) -> None:
    app, public, private = two_listeners
    deploy(app, "private-only", Access([Endpoint(visibility="private")]))
    deploy(app, "public-only", Access([Endpoint(visibility="public")]))
    deploy(app, "open-private", Access([Endpoint(visibility="private", disable_auth=True)]))
    async with aiohttp.ClientSession() as session:

        async def status(base: str, model: str, key: str | None = KEY) -> int:
            headers = bearer(key) if key else {}
            async with session.post(f"{base}/v1/chat/completions", json=chat(model), headers=headers) as resp:
                body = await resp.json()
                if resp.status == 404:
                    assert body["error"]["code"] == "model_not_found"
                    assert body["error"]["message"] == (
                        f"The model '{model}' does not exist or you do not have access to it."
                    )
                return resp.status

        assert await status(public, "private-only") == 404
        assert await status(private, "private-only") == 200
        assert await status(public, "public-only") == 200
        assert await status(private, "public-only") == 404
        assert await status(public, MODEL) == 200  # a configured model: on either listener, with a key
        assert await status(private, MODEL) == 200
        assert await status(private, "open-private", key=None) == 200
        assert await status(public, "open-private", key=None) == 401
        assert await status(public, "open-private") == 404
        async with session.get(f"{public}/v1/models", headers=bearer(KEY)) as resp:
            assert sorted(m["id"] for m in (await resp.json())["data"]) == sorted([MODEL, "public-only"])
        async with session.get(f"{private}/v1/models", headers=bearer(KEY)) as resp:
            listed = sorted(m["id"] for m in (await resp.json())["data"])
            assert listed == sorted([MODEL, "open-private", "private-only"])


async def test_admin_key_required(aiohttp_client: ClientFactory, engine: FakeEngine) -> None:
    client = await aiohttp_client(gateway(gateway_config(), engine))
    for headers in ({"X-Auth-Token": ADMIN}, bearer(ADMIN)):
        resp = await client.get(ADMIN_ROUTE, headers=headers)
        assert resp.status == 200 and (await resp.json())["key"] == "admin key"
    for headers in ({"X-Auth-Token": KEY}, bearer(KEY)):
        resp = await client.get(ADMIN_ROUTE, headers=headers)
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "permission_denied"
    for headers in ({}, {"X-Auth-Token": ADMIN + "x"}, bearer(ADMIN + "x"), {"X-Auth-Token": ""}):
        resp = await client.get(ADMIN_ROUTE, headers=headers)
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"
    # every /admin path, whatever its handler does: a project key never gets past the middleware
    resp = await client.get("/admin/v1/no-such-route", headers=bearer(KEY))
    assert resp.status == 403
    # X-Auth-Token is the admin API's: the /v1 routes take Authorization only
    assert (await client.get("/v1/models", headers={"X-Auth-Token": ADMIN})).status == 401


async def test_admin_with_auth_off_answers_loopback_only(aiohttp_client: ClientFactory, engine: FakeEngine) -> None:
    client = await aiohttp_client(gateway(gateway_config(keys=[], projects=[]), engine))
    resp = await client.get(ADMIN_ROUTE)
    assert resp.status == 200 and (await resp.json())["key"] == "anonymous"
    # a loopback peer forwarding for someone else is a proxy, and not a trusted one
    assert (await client.get(ADMIN_ROUTE, headers={"X-Forwarded-For": "127.0.0.1"})).status == 403
    assert (await client.get(ADMIN_ROUTE, headers={"Forwarded": "for=127.0.0.1"})).status == 403


@pytest.mark.parametrize(("forwarded_for", "status"), [("203.0.113.9", 403), ("127.0.0.1", 200)])
async def test_admin_with_auth_off_behind_a_trusted_proxy(
    aiohttp_client: ClientFactory, engine: FakeEngine, forwarded_for: str, status: int
) -> None:
    config = gateway_config(keys=[], projects=[], trusted_proxies=["127.0.0.1"])
    client = await aiohttp_client(gateway(config, engine))
    assert (await client.get(ADMIN_ROUTE, headers={"X-Forwarded-For": forwarded_for})).status == status
