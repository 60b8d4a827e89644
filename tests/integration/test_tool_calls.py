"""Tool calls and response formats through the HTTP layer, over a fake engine that writes a call.

What the model is made to write is the CPU model's business (tests/e2e/test_tools.py); here: the
guide sent upstream, the parsing of the model's markup into OpenAI's tool_calls, streamed and whole.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.text.tokenizer import Tokenizer
from tests.integration.conftest import MODEL
from tests.integration.fake_engine import FakeEngine
from tests.sse import parse_sse

CHAT = "/v1/chat/completions"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALLS = 'Sure.<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>'


def script(engine: FakeEngine, tokenizer: Tokenizer, text: str) -> None:
    engine.script = [[t] for t in tokenizer.encode(text)]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}], **extra}


async def test_a_call_in_the_output_becomes_tool_calls(
    client: TestClient, engine: FakeEngine, tokenizer: Tokenizer
) -> None:
    script(engine, tokenizer, CALLS)
    resp = await client.post(CHAT, json=chat(tools=[TOOL]))
    assert resp.status == 200, await resp.text()
    choice = (await resp.json())["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Sure."
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    sent = engine.requests[-1]
    guide = sent.sampling.guide
    assert guide is not None and guide.type == "ebnf_grammar" and "get_weather" in guide.text  # auto: text or calls
    prompt = tokenizer.decode(sent.prompt_ids)
    assert "get_weather" in prompt and "<tool_call>" in prompt  # the generic format: tools in the system prompt


async def test_streamed_calls_follow_openai(client: TestClient, engine: FakeEngine, tokenizer: Tokenizer) -> None:
    script(engine, tokenizer, CALLS)
    resp = await client.post(CHAT, json=chat(tools=[TOOL], tool_choice="required", stream=True))
    assert resp.status == 200, await resp.text()
    events = parse_sse(await resp.read())
    deltas = [e["choices"][0] for e in events if isinstance(e, dict) and e.get("choices")]
    content = "".join(d["delta"].get("content") or "" for d in deltas)
    pieces = [p for d in deltas for p in d["delta"].get("tool_calls") or ()]
    assert content == "Sure." and "<tool_call>" not in content
    first, rest = pieces[0], pieces[1:]
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"]["name"] == "get_weather"
    assert all("id" not in p and "name" not in p["function"] for p in rest)
    arguments = first["function"]["arguments"] + "".join(p["function"]["arguments"] for p in rest)
    assert json.loads(arguments) == {"city": "Paris"}
    assert deltas[-1]["finish_reason"] == "tool_calls"


async def test_tool_choice_none_leaves_text_alone(client: TestClient, engine: FakeEngine, tokenizer: Tokenizer) -> None:
    script(engine, tokenizer, CALLS)
    resp = await client.post(CHAT, json=chat(tools=[TOOL], tool_choice="none"))
    choice = (await resp.json())["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert engine.requests[-1].sampling.guide is None


async def test_response_format_sends_the_schema(client: TestClient, engine: FakeEngine, tokenizer: Tokenizer) -> None:
    script(engine, tokenizer, '{"city":"Paris"}')
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    rf = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    resp = await client.post(CHAT, json=chat(response_format=rf))
    assert (await resp.json())["choices"][0]["message"]["content"] == '{"city":"Paris"}'
    guide = engine.requests[-1].sampling.guide
    assert guide is not None and guide.type == "json_schema"
    assert json.loads(guide.text) == {**schema, "additionalProperties": False}  # closed, as xgrammar does
    resp = await client.post(CHAT, json=chat(response_format={"type": "json_object"}))
    guide = engine.requests[-1].sampling.guide
    assert resp.status == 200 and guide is not None and guide.type == "json"


async def test_history_with_tool_messages_is_rendered(
    client: TestClient, engine: FakeEngine, tokenizer: Tokenizer
) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky":"sunny"}'},
    ]
    resp = await client.post(CHAT, json={"model": MODEL, "messages": messages, "tools": [TOOL]})
    assert resp.status == 200, await resp.text()
    prompt = tokenizer.decode(engine.requests[-1].prompt_ids)
    assert '{"sky":"sunny"}' in prompt and '"city":"Paris"' in prompt
