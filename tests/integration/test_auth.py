"""Keys on REST and gRPC: 401 without a valid key, 403 outside its project, and 404 for a model outside
its scope, exactly as for a model that does not exist (a key cannot enumerate the others)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, ModelConfig, ProjectConfig
from gateway.grpcapi.stubs import pb, pb_grpc
from perf.stack import free_port
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL, REPLY
from tests.integration.fake_engine import FakeEngine

OTHER = "other-model"
KEY, KEY_RECORD = new_key("team-a", "full")
NARROW, NARROW_RECORD = new_key("team-b", "narrow")
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
CHAT_PB = [pb.ChatMessage(role="user", content="Hi")]


@pytest.fixture
async def app_client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine
) -> AsyncIterator[tuple[TestClient, int]]:
    port = free_port()
    models = [
        ModelConfig(id=name, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_output_tokens=64)
        for name in (MODEL, OTHER)
    ]
    config = GatewayConfig(
        grpc_port=port,
        models=models,
        projects=[ProjectConfig(id="team-a"), ProjectConfig(id="team-b", models=[OTHER])],
        keys=[KEY_RECORD, NARROW_RECORD],
    )
    yield await aiohttp_client(create_app(config, lambda url: engine)), port


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_rest_keys(app_client: tuple[TestClient, int]) -> None:
    client, _ = app_client
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY + "x"))
    assert resp.status == 401
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY))
    assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == REPLY
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(NARROW))
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"
    models = await (await client.get("/v1/models", headers=bearer(NARROW))).json()
    assert [m["id"] for m in models["data"]] == [OTHER]
    assert (await client.get("/health")).status == 200  # probes need no key
    assert (await client.get("/ready")).status == 200


async def test_project_scoped_base_path(app_client: tuple[TestClient, int]) -> None:
    client, _ = app_client
    resp = await client.post("/team-a/v1/chat/completions", json=CHAT, headers=bearer(KEY))
    assert resp.status == 200
    resp = await client.post("/team-b/v1/chat/completions", json=CHAT, headers=bearer(KEY))
    assert resp.status == 403
    resp = await client.get("/team-a/v1/models")
    assert resp.status == 401


async def test_grpc_keys(app_client: tuple[TestClient, int]) -> None:
    _, port = app_client
    request = pb.ChatCompletionRequest(model=MODEL, messages=[pb.ChatMessage(role="user", content="Hi")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ChatCompletion(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ChatCompletion(request, metadata=(("authorization", f"Bearer {NARROW}"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        resp = await stub.ChatCompletion(request, metadata=(("authorization", f"Bearer {KEY}"),))
        assert resp.choices[0].text == REPLY
        listed = await stub.ListModels(pb.ListModelsRequest(), metadata=(("authorization", f"Bearer {NARROW}"),))
        assert [m.id for m in listed.models] == [OTHER]


async def test_a_model_outside_the_keys_scope_reads_as_one_that_does_not_exist(
    app_client: tuple[TestClient, int],
) -> None:
    client, port = app_client
    answers = []
    for model in (MODEL, "no-such-model"):  # MODEL exists, outside NARROW's scope
        chat = await client.post("/v1/chat/completions", json={**CHAT, "model": model}, headers=bearer(NARROW))
        card = await client.get(f"/v1/models/{model}", headers=bearer(NARROW))
        completion = await client.post("/v1/completions", json={"model": model, "prompt": "x"}, headers=bearer(NARROW))
        answers.append([(r.status, (await r.text()).replace(model, "<model>")) for r in (chat, card, completion)])
    assert answers[0] == answers[1]
    assert {status for status, _ in answers[0]} == {404}
    assert all('"code":"model_not_found"' in text.replace(" ", "") for _, text in answers[0])
    metadata = (("authorization", f"Bearer {NARROW}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        grpc_answers = []
        for model in (MODEL, "no-such-model"):
            for call in (
                stub.ChatCompletion(pb.ChatCompletionRequest(model=model, messages=CHAT_PB), metadata=metadata),
                stub.Tokenize(pb.TokenizeRequest(model=model, text="x"), metadata=metadata),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                grpc_answers.append((err.value.code(), (err.value.details() or "").replace(model, "<model>")))
    assert grpc_answers[:2] == grpc_answers[2:]
    assert {code for code, _ in grpc_answers} == {grpc.StatusCode.NOT_FOUND}
