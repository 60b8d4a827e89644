"""The HTTP layer in-process over a fake engine: OpenAI shapes, SSE framing, every bad input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from gateway.text.tokenizer import Tokenizer
from tests.conftest import WEIGHTS, until
from tests.integration.conftest import MAX_BODY, MODEL, REPLY
from tests.integration.fake_engine import FakeEngine
from tests.sse import chat_text, finish_reasons, parse_sse

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hi"}]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, **extra}


async def post_sse(client: TestClient, path: str, body: dict[str, Any]) -> tuple[Any, list[Any]]:
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    return resp, parse_sse(await resp.read())


async def test_chat_whole(client: TestClient, engine: FakeEngine, tokenizer: Tokenizer) -> None:
    resp = await client.post(CHAT, json=chat())
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"] == {"role": "assistant", "content": REPLY, "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt = tokenizer.encode(tokenizer.apply_chat_template(MESSAGES))
    assert engine.requests[0].prompt_ids == prompt
    assert body["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": len(tokenizer.encode(REPLY)),
        "total_tokens": len(prompt) + len(tokenizer.encode(REPLY)),
    }


async def test_chat_stream_is_openai_sse(client: TestClient, tokenizer: Tokenizer) -> None:
    resp, events = await post_sse(client, CHAT, chat(stream=True, stream_options={"include_usage": True}))
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(tokenizer.encode(REPLY))
    assert events[-3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chat_text(events) == REPLY
    ids = {e["id"] for e in events if isinstance(e, dict)}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")


async def test_stream_without_usage_has_no_usage_chunk(client: TestClient) -> None:
    _, events = await post_sse(client, CHAT, chat(stream=True))
    assert all("usage" not in e for e in events if isinstance(e, dict))
    assert events[-1] == "[DONE]"


async def test_max_tokens_finishes_with_length(client: TestClient, tokenizer: Tokenizer) -> None:
    body = await (await client.post(CHAT, json=chat(max_tokens=3))).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["message"]["content"] == tokenizer.decode(tokenizer.encode(REPLY)[:3])


async def test_max_completion_tokens_wins(client: TestClient) -> None:
    body = await (await client.post(CHAT, json=chat(max_tokens=10, max_completion_tokens=2))).json()
    assert body["usage"]["completion_tokens"] == 2


async def test_stop_string_ends_generation_and_is_not_sent(client: TestClient, engine: FakeEngine) -> None:
    _, events = await post_sse(client, CHAT, chat(stream=True, stop=["nothing", "END"]))
    assert chat_text(events) == "Hello there! Café 😀 costs 12€. "
    assert finish_reasons(events) == {0: "stop"}
    assert engine.closed == 1  # the upstream stream was closed (cancelled) at the stop string


async def test_n_choices(client: TestClient, engine: FakeEngine) -> None:
    body = await (await client.post(CHAT, json=chat(n=2, seed=7, temperature=0.8))).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["message"]["content"] == REPLY for c in body["choices"])
    assert sorted(r.sampling.seed or 0 for r in engine.requests) == [7, 8]  # choice i samples with seed + i
    _, events = await post_sse(client, CHAT, chat(n=2, stream=True))
    assert chat_text(events, 0) == chat_text(events, 1) == REPLY
    assert finish_reasons(events) == {0: "stop", 1: "stop"}


async def test_completions_prompts_echo_and_token_ids(client: TestClient, tokenizer: Tokenizer) -> None:
    body = await (await client.post("/v1/completions", json={"model": MODEL, "prompt": "Say", "max_tokens": 4})).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == tokenizer.decode(tokenizer.encode(REPLY)[:4])
    assert body["choices"][0]["finish_reason"] == "length"
    body = await (
        await client.post("/v1/completions", json={"model": MODEL, "prompt": ["A", "B c"], "n": 2, "echo": True})
    ).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][2]["text"].startswith("B c")
    assert body["usage"]["prompt_tokens"] == len(tokenizer.encode("A")) + len(tokenizer.encode("B c"))
    ids = tokenizer.encode("Hello")
    body = await (await client.post("/v1/completions", json={"model": MODEL, "prompt": ids, "echo": True})).json()
    assert body["choices"][0]["text"].startswith("Hello")


async def test_completions_default_is_16_tokens(client: TestClient) -> None:
    body = await (await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})).json()
    assert body["usage"]["completion_tokens"] == min(16, body["usage"]["completion_tokens"])
    assert body["choices"][0]["finish_reason"] in ("length", "stop")


async def test_completions_stream_with_echo(client: TestClient) -> None:
    _, events = await post_sse(
        client, "/v1/completions", {"model": MODEL, "prompt": "Say", "stream": True, "echo": True, "max_tokens": 50}
    )
    text = "".join(c["text"] for e in events if isinstance(e, dict) for c in e["choices"])
    assert text == "Say" + REPLY
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": MESSAGES}, "model", None),
        ({"model": MODEL}, "messages", None),
        ({"model": MODEL, "messages": []}, "messages", None),
        (chat(temperature="hot"), "temperature", None),
        (chat(temperature=3), "temperature", None),
        (chat(top_p=0), "top_p", None),
        (chat(n=0), "n", None),
        (chat(max_tokens=0), "max_tokens", None),
        (chat(max_tokens=100000), "max_tokens", None),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop", None),
        (chat(stream="yes please"), "stream", None),
        (chat(messages=[{"role": "robot", "content": "x"}]), "messages.0.role", None),
        (chat(frobnicate=1), "frobnicate", None),
        (chat(tools=[{"type": "function"}]), "tools.0.function", None),
        (chat(tool_choice="required"), "tool_choice", None),
        (chat(top_logprobs=2), "top_logprobs", None),
        (chat(logit_bias={"x": 1}), "logit_bias", None),
        (chat(response_format={"type": "json_schema"}), "response_format.json_schema.json_schema", None),
        (chat(response_format={"type": "xml"}), "response_format", None),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
            "response_format",
            None,
        ),
        (chat(functions=[{"name": "f"}]), "functions", "unsupported_parameter"),
        (chat(messages=[{"role": "user", "content": "x " * 9000}]), "messages", "context_length_exceeded"),
        (chat(min_tokens=5, max_tokens=2), "min_tokens", None),
    ],
)
async def test_bad_chat_requests_name_the_parameter(
    client: TestClient, body: dict[str, Any], param: str, code: str | None
) -> None:
    resp = await client.post(CHAT, json=body)
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": []}, "prompt"),
        ({"model": MODEL, "prompt": [10**9]}, "prompt"),
        ({"model": MODEL, "prompt": "x", "best_of": 3}, "best_of"),
        ({"model": MODEL, "prompt": "x", "echo": "loud"}, "echo"),
    ],
)
async def test_bad_completion_requests(client: TestClient, body: dict[str, Any], param: str) -> None:
    resp = await client.post("/v1/completions", json=body)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["param"] == param


async def test_invalid_json(client: TestClient) -> None:
    for raw in (b"{not json", b"[1, 2]", b""):
        resp = await client.post(CHAT, data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_json"


async def test_unknown_model_is_404(client: TestClient) -> None:
    resp = await client.post(CHAT, json={**chat(), "model": "gpt-9"})
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert (await client.get("/v1/models/gpt-9")).status == 404


async def test_oversize_body_is_413(client: TestClient) -> None:
    resp = await client.post(CHAT, json=chat(user="x" * MAX_BODY))
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "request_too_large"


async def test_unknown_route_and_method_are_openai_errors(client: TestClient) -> None:
    resp = await client.get("/v1/nothing")
    assert resp.status == 404 and "error" in await resp.json()
    resp = await client.get(CHAT)
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_models(client: TestClient) -> None:
    body = await (await client.get("/v1/models")).json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == [MODEL]
    card = await (await client.get(f"/v1/models/{MODEL}")).json()
    assert card["object"] == "model" and card["id"] == MODEL and card["created"] > 0


async def test_upstream_unavailable_is_503(client: TestClient, engine: FakeEngine) -> None:
    engine.unavailable = True
    for stream in (False, True):
        resp = await client.post(CHAT, json=chat(stream=stream))
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    assert (await client.get("/ready")).status == 503
    assert (await client.get("/health")).status == 200
    engine.unavailable = False
    assert (await client.get("/ready")).status == 200


async def test_error_after_first_byte_is_in_band_and_server_keeps_serving(
    client: TestClient, engine: FakeEngine
) -> None:
    engine.fail_after = 3
    _, events = await post_sse(client, CHAT, chat(stream=True))
    assert events[-1] != "[DONE]"
    assert events[-1]["error"]["code"] == "upstream_error"
    assert chat_text(events[:-1])  # some content went out before the failure
    engine.fail_after = None
    body = await (await client.post(CHAT, json=chat())).json()
    assert body["choices"][0]["message"]["content"] == REPLY


async def test_failure_before_first_token_of_a_stream_gets_a_status(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_after = 0
    resp = await client.post(CHAT, json=chat(stream=True))
    assert resp.status == 502
    assert (await resp.json())["error"]["type"] == "upstream_error"


async def test_client_disconnect_closes_the_upstream_stream(client: TestClient, engine: FakeEngine) -> None:
    engine.delay = 0.05
    resp = await client.post(CHAT, json=chat(stream=True))
    assert resp.status == 200
    await resp.content.readuntil(b"\n\n")
    resp.close()  # the client goes away mid-stream
    await until(lambda: engine.closed > 0, 2.0, "the upstream stream closed")
    assert engine.closed == 1


async def test_saturated_upstream_is_refused_fast(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine
) -> None:
    config = GatewayConfig(
        grpc_port=None,
        models=[ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_in_flight=1, max_queue=0)],
    )
    client = await aiohttp_client(create_app(config, lambda url: engine))
    engine.delay = 0.05
    busy = await client.post(CHAT, json=chat(stream=True))
    assert busy.status == 200
    refused = await client.post(CHAT, json=chat())
    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["code"] == "server_overloaded"
    await busy.read()
    engine.delay = 0
    assert (await client.post(CHAT, json=chat())).status == 200


@pytest.mark.parametrize("script", ["eos", "eos then more", "nothing"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_an_end_token_first_is_an_empty_stop_with_zero_completion_tokens(
    client: TestClient, engine: FakeEngine, tokenizer: Tokenizer, script: str, path: str
) -> None:
    eos = tokenizer.eos_token_id
    assert eos is not None
    engine.script = {"eos": [[eos]], "eos then more": [[eos], tokenizer.encode(" more")], "nothing": []}[script]
    body = chat() if path == CHAT else {"model": MODEL, "prompt": "Say"}
    whole = await (await client.post(path, json=body)).json()
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert (choice["message"]["content"] if path == CHAT else choice["text"]) == ""
    assert whole["usage"]["completion_tokens"] == 0
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"]
    _, events = await post_sse(client, path, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert finish_reasons(events) == {0: "stop"}
    assert events[-2]["usage"] == whole["usage"]
