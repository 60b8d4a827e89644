"""The operator API on real parts: two embedded tritonservers in explicit model-control mode (nothing
loaded until a deployment asks), a `python -m gateway serve` process that knows them as one upstream
group, admin and project keys, a private listener; clients are the official openai SDK and plain HTTP.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import tritonclient.grpc as grpcclient

from gateway.auth.keys import new_key
from gateway.embedded.tritonserver import TritonPorts, TritonServer
from perf.stack import free_port
from tests.conftest import MODEL_REPOSITORY, REPO
from tests.e2e.conftest import reaped, start_gateway, stop, wait_http

pytestmark = pytest.mark.e2e

READY_WITHIN = 180.0  # seconds: a generous bound for loads on a busy 2-core machine (not a timing claim)


@dataclass
class Gateway:
    tmp: Path
    config: Path
    admin_key: str
    project_key: str
    tritons: tuple[TritonServer, TritonServer]
    port: int = 0
    private_port: int = 0
    process: Any = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def urls(self) -> list[str]:
        return [t.grpc_url for t in self.tritons]

    def start(self) -> None:
        self.process, self.port, log = start_gateway(self.tmp, "--config", str(self.config))
        wait_http(self.base + "/ready", self.process, 120, log)

    def stop(self) -> None:
        assert stop(self.process) == 0

    def call(
        self, method: str, path: str, body: Any = None, key: str | None = "admin", port: int | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Content-Type": "application/json"}
        token = {"admin": self.admin_key, "project": self.project_key}.get(key or "", key)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        url = f"http://127.0.0.1:{port or self.port}{path}"
        request = urllib.request.Request(url, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null"), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)

    def client(self, key: str | None = None, port: int | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port or self.port}/v1", api_key=key or self.project_key, max_retries=0
        )

    def wait_status(self, deployment_id: str, wanted: str) -> dict[str, Any]:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            status, body, _ = self.call("GET", f"/admin/v1/deployments/{deployment_id}")
            if status == 200 and body["status"] == wanted:
                return dict(body)
            assert status == 200, body
            assert body["status"] != "error" or wanted == "error", body
            time.sleep(0.2)
        pytest.fail(f"deployment {deployment_id} not {wanted} within {READY_WITHIN}s: {body}")

    def wait_gone(self, deployment_id: str) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if self.call("GET", f"/admin/v1/deployments/{deployment_id}")[0] == 404:
                return
            time.sleep(0.2)
        pytest.fail(f"deployment {deployment_id} still there after {READY_WITHIN}s")

    def deploy(self, name: str, **fields: Any) -> dict[str, Any]:
        status, body, _ = self.call("POST", "/admin/v1/deployments", {"name": name, "model": "synthetic", **fields})
        assert status == 201, body
        return self.wait_status(body["id"], "ready")


def loaded(triton: TritonServer, model: str = "synthetic") -> bool:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        return bool(client.is_model_ready(model))
    finally:
        client.close()


def wait_loaded(triton: TritonServer, wanted: bool) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while loaded(triton) != wanted:
        assert time.monotonic() < deadline, f"{triton.grpc_url}: synthetic never became loaded={wanted}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("deployments")
    tritons = tuple(
        TritonServer(MODEL_REPOSITORY, tmp / name, TritonPorts(free_port(), free_port(), free_port()), explicit=True)
        for name in ("a", "b")
    )
    for triton in tritons:
        triton.start()
    try:
        for triton in tritons:
            triton.wait_ready(timeout=180)
        admin_key, admin = new_key("ops", "admin")
        project_key, project = new_key("team", "app")
        private_port = free_port()
        config = tmp / "gateway.toml"
        config.write_text(
            f"data_dir = {json.dumps(str(tmp / 'data'))}\n"
            f'private_host = "127.0.0.1"\nprivate_port = {private_port}\nreconcile_interval = 1.0\n'
            f'[[upstream_groups]]\nname = "near"\nurls = ["{tritons[0].grpc_url}"]\n'
            f'[[upstream_groups]]\nname = "far"\nurls = ["{tritons[1].grpc_url}"]\n'
            '[[projects]]\nid = "ops"\n[[projects]]\nid = "team"\n'
            f'[[keys]]\nid = "{admin.id}"\nsha256 = "{admin.sha256}"\nproject = "ops"\nadmin = true\n'
            f'[[keys]]\nid = "{project.id}"\nsha256 = "{project.sha256}"\nproject = "team"\n'
        )
        gw = Gateway(tmp, config, admin_key, project_key, tritons, private_port=private_port)  # type: ignore[arg-type]
        try:
            gw.start()
            yield gw
            gw.stop()
        finally:
            with reaped(gw.process):  # a failed test (or restart) leaves no gateway running
                pass
    finally:
        for triton in tritons:
            triton.stop()


async def _chat(client: openai.AsyncOpenAI, model: str, max_tokens: int = 4) -> str | None:
    reply = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens
    )
    return reply.choices[0].finish_reason


def test_admin_key_required_everywhere(gateway: Gateway) -> None:
    for method, path in (
        ("GET", "/admin/v1/deployments"),
        ("POST", "/admin/v1/deployments"),
        ("GET", "/admin/v1/upstreams"),
        ("GET", "/admin/v1/models"),
        ("DELETE", "/admin/v1/deployments/dep_x"),
        ("PUT", "/admin/v1/deployments/dep_x/acls"),
    ):
        status, body, _ = gateway.call(method, path, {} if method in ("POST", "PUT") else None, key="project")
        assert status == 403, (method, path, body)
        assert body["error"]["type"]
        assert gateway.call(method, path, key=None)[0] == 401
    # X-Auth-Token is the other way to present the admin key
    request = urllib.request.Request(gateway.base + "/admin/v1/upstreams", headers={"X-Auth-Token": gateway.admin_key})
    with urllib.request.urlopen(request, timeout=30) as response:
        upstreams = json.loads(response.read())["upstreams"]
    assert [u["url"] for u in upstreams] == gateway.urls
    assert [u["group"] for u in upstreams] == ["near", "far"] and all(u["healthy"] for u in upstreams)
    status, catalogue, _ = gateway.call("GET", "/admin/v1/models")
    assert status == 200
    synthetic = next(m for m in catalogue["models"] if m["name"] == "synthetic")
    assert {p["url"] for p in synthetic["upstreams"]} == set(gateway.urls)


def test_deploy_serve_scale_patch_and_delete_while_streaming(gateway: Gateway) -> None:
    d = gateway.deploy("dep-main", min_size=2, tags=["e2e"])
    assert sorted(d["placement"]) == sorted(gateway.urls) and d["size"] == 2
    assert all(loaded(t) for t in gateway.tritons)

    async def serve() -> None:
        async with gateway.client() as client:
            assert await _chat(client, "dep-main") == "length"
            ids = [m.id async for m in client.models.list()]
            assert "dep-main" in ids

    asyncio.run(serve())

    # scale to one: the model is unloaded from the server it left (nothing else holds it there)
    status, body, _ = gateway.call("PATCH", f"/admin/v1/deployments/{d['id']}", {"min_size": 1, "max_size": 1})
    assert status == 200, body
    deadline = time.monotonic() + READY_WITHIN
    while (d := gateway.call("GET", f"/admin/v1/deployments/{d['id']}")[1])["size"] != 1:
        assert time.monotonic() < deadline, d
        time.sleep(0.2)
    kept = d["placement"][0]
    for triton in gateway.tritons:
        wait_loaded(triton, triton.grpc_url == kept)

    # limits: one request in flight, no queue: a second concurrent one is refused with 503
    status, body, _ = gateway.call(
        "PATCH", f"/admin/v1/deployments/{d['id']}", {"limits": {"max_in_flight": 1, "max_queue": 0}}
    )
    assert status == 200 and body["limits"]["max_in_flight"] == 1, body

    async def limited() -> None:
        async with gateway.client() as client:
            stream = await client.chat.completions.create(
                model="dep-main", messages=[{"role": "user", "content": "hi"}], max_tokens=200, stream=True
            )
            async for _ in stream:  # the first chunk: the request holds the slot
                break
            with pytest.raises(openai.APIStatusError) as refused:
                await _chat(client, "dep-main")
            assert refused.value.status_code == 503
            await stream.close()

    asyncio.run(limited())
    status, body, _ = gateway.call("PATCH", f"/admin/v1/deployments/{d['id']}", {"limits": {"max_in_flight": 8}})
    assert status == 200

    # delete while streams run: they finish; new requests get 404 at once
    async def delete_under_load() -> None:
        async with gateway.client() as client:
            streams = [
                await client.chat.completions.create(
                    model="dep-main", messages=[{"role": "user", "content": "hi"}], max_tokens=150, stream=True
                )
                for _ in range(3)
            ]
            firsts = [await anext(aiter(s)) for s in streams]
            assert all(f.id for f in firsts)
            status, body, _ = await asyncio.to_thread(gateway.call, "DELETE", f"/admin/v1/deployments/{d['id']}")
            assert status == 200 and body["status"] == "deleting", body
            with pytest.raises(openai.NotFoundError):
                await _chat(client, "dep-main")
            for stream in streams:
                reasons = [c.choices[0].finish_reason async for c in stream if c.choices]
                assert reasons[-1] == "length"

    asyncio.run(delete_under_load())
    gateway.wait_gone(d["id"])
    for triton in gateway.tritons:
        wait_loaded(triton, False)
    with urllib.request.urlopen(gateway.base + "/metrics", timeout=30) as response:
        assert 'model="dep-main"' not in response.read().decode()  # its series went with it


def test_acls_endpoints_and_auth(gateway: Gateway) -> None:
    d = gateway.deploy("dep-acl", acls=[{"ip": "10.0.0.0/8", "description": "office"}])
    private = gateway.deploy("dep-private", endpoints=[{"visibility": "private"}])
    open_ = gateway.deploy("dep-open", endpoints=[{"visibility": "public", "disable_auth": True}])

    async def check() -> None:
        async with gateway.client() as client:
            with pytest.raises(openai.PermissionDeniedError):
                await _chat(client, "dep-acl")
            status, body, _ = await asyncio.to_thread(
                gateway.call, "PUT", f"/admin/v1/deployments/{d['id']}/acls", {"acls": [{"ip": "127.0.0.1/32"}]}
            )
            assert status == 200 and [a["ip"] for a in body["acls"]] == ["127.0.0.1/32"], body
            assert await _chat(client, "dep-acl") == "length"
            status, body, _ = await asyncio.to_thread(
                gateway.call, "POST", f"/admin/v1/deployments/{d['id']}/acls", {"ip": "192.168.0.0/16"}
            )
            assert status == 201 and len(body["acls"]) == 2
            loopback = body["acls"][0]["id"]
            status, body, _ = await asyncio.to_thread(
                gateway.call, "DELETE", f"/admin/v1/deployments/{d['id']}/acls/{loopback}"
            )
            assert status == 200 and [a["ip"] for a in body["acls"]] == ["192.168.0.0/16"]
            with pytest.raises(openai.PermissionDeniedError):
                await _chat(client, "dep-acl")

            # a private endpoint: absent from the public listener, served on the private one
            with pytest.raises(openai.NotFoundError):
                await _chat(client, "dep-private")
            assert "dep-private" not in [m.id async for m in client.models.list()]
        async with gateway.client(port=gateway.private_port) as private_client:
            assert await _chat(private_client, "dep-private") == "length"
        # auth disabled on one deployment's endpoint: no key needed there, and only there
        async with gateway.client(key="none") as anonymous:
            with pytest.raises(openai.AuthenticationError):
                await _chat(anonymous, "dep-acl")
        status, body, _ = await asyncio.to_thread(
            gateway.call,
            "POST",
            "/v1/chat/completions",
            {"model": "dep-open", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            None,
        )
        assert status == 200, body
        status, body, _ = await asyncio.to_thread(
            gateway.call,
            "POST",
            "/v1/chat/completions",
            {"model": "dep-acl", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            None,
        )
        assert status == 401, body

    asyncio.run(check())
    for dep in (d, private, open_):
        assert gateway.call("DELETE", f"/admin/v1/deployments/{dep['id']}")[0] == 200
    for dep in (d, private, open_):
        gateway.wait_gone(dep["id"])


def test_a_deployment_prefers_its_first_group_and_pins_by_suffix(gateway: Gateway) -> None:
    near, far = gateway.urls
    d = gateway.deploy("dep-groups", upstream_groups=["far", "near"], min_size=2)
    assert sorted(d["placement"]) == sorted(gateway.urls)

    async def upstreams_of(model: str) -> set[str]:
        async with gateway.client() as client:
            seen = set()
            for _ in range(4):
                raw = await client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                seen.add(raw.headers["x-upstream"])
            return seen

    assert asyncio.run(upstreams_of("dep-groups")) == {f"far/{far}"}  # idle: always the preferred group
    assert asyncio.run(upstreams_of("dep-groups:near")) == {f"near/{near}"}
    bad = {"name": "x", "model": "synthetic", "upstream_groups": ["nowhere"]}
    status, body, _ = gateway.call("POST", "/admin/v1/deployments", bad)
    assert status == 400 and body["error"]["param"] == "upstream_groups"
    assert gateway.call("DELETE", f"/admin/v1/deployments/{d['id']}")[0] == 200
    gateway.wait_gone(d["id"])


def test_a_model_triton_cannot_load_ends_in_error_with_its_reason(gateway: Gateway) -> None:
    status, body, _ = gateway.call(
        "POST",
        "/admin/v1/deployments",
        {"name": "dep-bad", "model": "no-such-model", "tokenizer": str(MODEL_REPOSITORY / "smollm2" / "weights")},
    )
    assert status == 201, body
    failed = gateway.wait_status(body["id"], "error")
    assert "no-such-model" in failed["error_message"] and failed["size"] == 0

    async def refused() -> None:
        async with gateway.client() as client:
            with pytest.raises(openai.NotFoundError):
                await _chat(client, "dep-bad")

    asyncio.run(refused())
    assert gateway.call("DELETE", f"/admin/v1/deployments/{body['id']}")[0] == 200
    gateway.wait_gone(body["id"])


def test_a_model_the_gateway_materialises(gateway: Gateway) -> None:
    """`gateway/synthetic` is loaded from the gateway's own files (config + model.py in the load request),
    under a Triton name of its own, on a server whatever its repository holds."""
    status, catalogue, _ = gateway.call("GET", "/admin/v1/models")
    assert status == 200
    entry = next(m for m in catalogue["models"] if m["name"] == "gateway/synthetic")
    assert {p["state"] for p in entry["upstreams"]} == {"MATERIALISABLE"} and entry["tokenizer"]
    target = gateway.tritons[1]
    d = gateway.deploy("dep-materialised", model="gateway/synthetic", upstreams=[target.grpc_url])
    assert d["triton_model"] == "gateway-synthetic" and d["placement"] == [target.grpc_url]
    assert loaded(target, "gateway-synthetic") and not loaded(gateway.tritons[0], "gateway-synthetic")

    async def serve() -> None:
        async with gateway.client() as client:
            assert await _chat(client, "dep-materialised") == "length"

    asyncio.run(serve())
    assert gateway.call("POST", "/admin/v1/deployments", {"name": "x", "model": "gateway/nothing"})[0] == 400
    assert gateway.call("DELETE", f"/admin/v1/deployments/{d['id']}")[0] == 200
    gateway.wait_gone(d["id"])
    assert not loaded(target, "gateway-synthetic")


def test_pagination_over_many_deployments_of_one_model(gateway: Gateway) -> None:
    first = gateway.deploy("page-000", upstreams=[gateway.urls[0]], tags=["page", "even"])
    ids = [first["id"]]
    for i in range(1, 120):
        tags = ["page", "even" if i % 2 == 0 else "odd"]
        status, body, _ = gateway.call(
            "POST",
            "/admin/v1/deployments",
            {"name": f"page-{i:03d}", "model": "synthetic", "upstreams": [gateway.urls[0]], "tags": tags},
        )
        assert status == 201, body
        ids.append(body["id"])
    for deployment_id in ids:
        gateway.wait_status(deployment_id, "ready")

    status, body, headers = gateway.call("GET", "/admin/v1/deployments?tag=page&per_page=50&page=3&order_by=name_asc")
    assert status == 200 and headers["X-Total-Count"] == "120" and body["total_count"] == 120
    assert [d["name"] for d in body["deployments"]] == [f"page-{i:03d}" for i in range(100, 120)]
    status, body, headers = gateway.call("GET", "/admin/v1/deployments?tag=odd&order_by=name_desc&per_page=5")
    assert headers["X-Total-Count"] == "60" and body["deployments"][0]["name"] == "page-119"
    assert gateway.call("GET", "/admin/v1/deployments?per_page=101")[0] == 400
    assert gateway.call("GET", "/admin/v1/deployments?name=page-11&per_page=100")[1]["total_count"] == 10

    # each id serves the one loaded Triton model, each with its own limits
    async def serve() -> None:
        async with gateway.client() as client:
            assert await _chat(client, "page-007") == "length"
            assert await _chat(client, "page-118") == "length"

    asyncio.run(serve())
    for deployment_id in ids:
        assert gateway.call("DELETE", f"/admin/v1/deployments/{deployment_id}")[0] == 200
    for deployment_id in ids:
        gateway.wait_gone(deployment_id)
    wait_loaded(gateway.tritons[0], False)


def test_restart_finds_deployments_and_reloads_what_triton_lost(gateway: Gateway) -> None:
    d = gateway.deploy("dep-durable", min_size=2)
    gateway.stop()
    # while the gateway is down, one server loses the model (as a restarted Triton would)
    client = grpcclient.InferenceServerClient(gateway.tritons[1].grpc_url)
    client.unload_model("synthetic")
    client.close()
    wait_loaded(gateway.tritons[1], False)
    gateway.start()
    status, body, _ = gateway.call("GET", f"/admin/v1/deployments/{d['id']}")
    assert status == 200 and body["status"] == "ready", body
    wait_loaded(gateway.tritons[1], True)

    async def serve() -> None:
        async with gateway.client() as client:
            assert await _chat(client, "dep-durable") == "length"

    asyncio.run(serve())
    assert gateway.call("DELETE", f"/admin/v1/deployments/{d['id']}")[0] == 200
    gateway.wait_gone(d["id"])


def test_replicas_sharing_redis_converge(gateway: Gateway, redis_url: str) -> None:
    """Two more gateways on one Redis store: a deployment made on one is served by the other once its
    change notification arrives, and a delete on the other takes it away from both."""
    import redis

    shared = redis_url.rsplit("/", 1)[0] + "/9"  # a database of this test's own
    redis.Redis.from_url(shared).flushdb()
    text = gateway.config.read_text().replace("reconcile_interval = 1.0", "reconcile_interval = 30.0")
    replicas = []
    for name in ("r1", "r2"):
        config = gateway.tmp / f"{name}.toml"
        # their own data_dir and no private listener: what they share is the Redis store
        lines = [line for line in text.splitlines() if not line.startswith(("data_dir", "private_"))]
        config.write_text(
            f"data_dir = {json.dumps(str(gateway.tmp / name))}\ndeployments_redis_url = {json.dumps(shared)}\n"
            + "\n".join(lines)
            + "\n"
        )
        replica = Gateway(gateway.tmp, config, gateway.admin_key, gateway.project_key, gateway.tritons)
        replicas.append(replica)
    try:
        for replica in replicas:
            replica.start()
        one, two = replicas
        d = one.deploy("dep-shared")

        def served_by(replica: Gateway) -> bool:
            status, models, _ = replica.call("GET", "/v1/models", key="project")
            return status == 200 and "dep-shared" in [m["id"] for m in models["data"]]

        deadline = time.monotonic() + READY_WITHIN  # notification, not the 30 s reconcile, brings it
        while not served_by(two):
            assert time.monotonic() < deadline, "the second replica never served the deployment"
            time.sleep(0.1)

        async def chat(replica: Gateway) -> str | None:
            async with replica.client() as client:
                return await _chat(client, "dep-shared")

        assert asyncio.run(chat(two)) == "length"
        assert two.call("DELETE", f"/admin/v1/deployments/{d['id']}")[0] == 200
        while served_by(one):
            assert time.monotonic() < deadline, "the first replica still serves a deleted deployment"
            time.sleep(0.1)
        two.wait_gone(d["id"])
        assert one.call("GET", f"/admin/v1/deployments/{d['id']}")[0] == 404
    finally:
        for replica in replicas:
            if replica.process is not None:
                with reaped(replica.process):
                    replica.stop()


def test_the_cli_verbs(gateway: Gateway) -> None:
    def cli(*args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "deployments", "--url", gateway.base, "--key", gateway.admin_key, *args],
            cwd=REPO,
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    made = cli("create", "dep-cli", "--model", "synthetic", "--tag", "cli", "--max-in-flight", "4", "--wait")
    assert made["status"] == "ready" and made["limits"]["max_in_flight"] == 4
    listed = cli("list", "--tag", "cli")
    assert listed["total_count"] == 1 and listed["deployments"][0]["id"] == made["id"]
    assert cli("patch", made["id"], "--max-queue", "2")["limits"]["max_queue"] == 2
    assert "synthetic" in {m["name"] for m in cli("models")["models"]}
    assert cli("delete", made["id"])["status"] == "deleting"
    gateway.wait_gone(made["id"])
    refused = subprocess.run(
        [sys.executable, "-m", "gateway", "deployments", "--url", gateway.base, "--key", gateway.project_key, "list"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode != 0 and "403" in refused.stderr
