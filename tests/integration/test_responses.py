"""POST /v1/responses through the HTTP layer, over the fake engine: the Response object, its typed
event stream, an error after the first byte, and the requests refused because nothing is stored."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.text.tokenizer import Tokenizer
from tests.integration.conftest import MODEL, REPLY
from tests.integration.fake_engine import FakeEngine

RESPONSES = "/v1/responses"
TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALLS = 'Sure.<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>'


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "Say hello.", **extra}


def events_of(body: bytes) -> list[dict[str, Any]]:
    """The stream's events; each block's `event:` line must name its data's type."""
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        kind, data = block.split("\n")
        assert kind.startswith("event: ") and data.startswith("data: "), block
        event = orjson.loads(data[6:])
        assert event["type"] == kind[7:]
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def without_ids(response: dict[str, Any]) -> dict[str, Any]:
    """A response with what differs between two runs of the same request left out."""
    out = {k: v for k, v in response.items() if k not in ("id", "created_at", "completed_at")}
    out["output"] = [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in response["output"]]
    return out


async def test_whole_response(client: TestClient) -> None:
    resp = await client.post(RESPONSES, json=ask(instructions="Be brief.", metadata={"k": "v"}))
    assert resp.status == 200, await resp.text()
    assert resp.headers["x-request-id"]
    body = await resp.json()
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    assert body["model"] == MODEL and body["incomplete_details"] is None and body["error"] is None
    (message,) = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert message["id"].startswith("msg_")
    assert message["content"] == [{"type": "output_text", "text": REPLY, "annotations": [], "logprobs": []}]
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert body["instructions"] == "Be brief." and body["metadata"] == {"k": "v"}
    assert body["store"] is False and body["previous_response_id"] is None
    assert body["text"] == {"format": {"type": "text"}} and body["tools"] == [] and body["tool_choice"] == "auto"


async def test_stream_events_and_final_response(client: TestClient) -> None:
    resp = await client.post(RESPONSES, json=ask(stream=True))
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    events = events_of(await resp.read())
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    item_id = events[2]["item"]["id"]
    assert all(d["item_id"] == item_id and d["output_index"] == 0 and d["content_index"] == 0 for d in deltas)
    assert "".join(d["delta"] for d in deltas) == REPLY == events[-4]["text"]
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"] == [events[-2]["item"]]
    whole = await (await client.post(RESPONSES, json=ask())).json()
    assert without_ids(final) == without_ids(whole)


async def test_length_cut_is_incomplete(client: TestClient) -> None:
    body = await (await client.post(RESPONSES, json=ask(max_output_tokens=3))).json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["usage"]["output_tokens"] == 3
    assert body["max_output_tokens"] == 3
    events = events_of(await (await client.post(RESPONSES, json=ask(max_output_tokens=3, stream=True))).read())
    assert events[-1]["type"] == "response.incomplete"
    assert without_ids(events[-1]["response"]) == without_ids(body)


async def test_function_calls_whole_and_streamed(client: TestClient, engine: FakeEngine, tokenizer: Tokenizer) -> None:
    engine.script = [[t] for t in tokenizer.encode(CALLS)]
    resp = await client.post(RESPONSES, json=ask(tools=[TOOL]))
    body = await resp.json()
    assert resp.status == 200, body
    message, call = body["output"]
    assert message["content"][0]["text"] == "Sure."
    assert call["type"] == "function_call" and call["status"] == "completed" and call["id"].startswith("fc_")
    assert call["call_id"].startswith("call_") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert body["tools"] == [{**TOOL, "description": None, "strict": None}]

    events = events_of(await (await client.post(RESPONSES, json=ask(tools=[TOOL], stream=True))).read())
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [i["type"] for i in added] == ["message", "function_call"]
    assert added[1]["arguments"] == "" and added[1]["status"] == "in_progress" and added[1]["name"] == "get_weather"
    kinds = [e["type"] for e in events]
    # the message is done before the call begins
    assert kinds.index("response.output_item.done") < kinds.index("response.function_call_arguments.delta")
    arguments = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(arguments) == {"city": "Paris"} and done["arguments"] == arguments
    assert done["item_id"] == added[1]["id"] and done["output_index"] == 1
    assert without_ids(events[-1]["response"]) == without_ids(body)


async def test_input_items_become_the_chat(client: TestClient, engine: FakeEngine, tokenizer: Tokenizer) -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"sky":"sunny"}'},
    ]
    resp = await client.post(RESPONSES, json=ask(input=items, tools=[TOOL], instructions="Answer in French."))
    assert resp.status == 200, await resp.text()
    prompt = tokenizer.decode(engine.requests[-1].prompt_ids)
    assert prompt.index("Answer in French.") < prompt.index("Weather in Paris?") < prompt.index('"city":"Paris"')
    assert prompt.index('"city":"Paris"') < prompt.index('{"sky":"sunny"}')


async def test_json_schema_format_sends_the_schema(client: TestClient, engine: FakeEngine) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    text = {"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}}
    body = await (await client.post(RESPONSES, json=ask(text=text))).json()
    guide = engine.requests[-1].sampling.guide
    assert guide is not None and guide.type == "json_schema"
    assert body["text"]["format"] == {**text["format"], "description": None}


async def test_error_after_the_first_byte_is_an_error_event_then_failed(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_after = 3
    resp = await client.post(RESPONSES, json=ask(stream=True))
    assert resp.status == 200
    events = events_of(await resp.read())
    error, failed = events[-2:]
    assert error["type"] == "error" and error["code"] == "upstream_error" and "boom" in error["message"]
    assert error["error"]["code"] == "upstream_error"  # where the official SDKs look for it
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert any(e["type"] == "response.output_text.delta" for e in events)


async def test_project_route_and_metrics(client: TestClient) -> None:
    resp = await client.post("/default/v1/responses", json=ask())
    assert resp.status == 200, await resp.text()
    metrics = await (await client.get("/metrics")).text()
    assert 'route="/{project_id}/v1/responses"' in metrics


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"truncation": "auto"}, "truncation"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input.0.content.0"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}}, "text.format"),
        ({"tools": [TOOL], "text": {"format": {"type": "json_object"}}, "tool_choice": "required"}, "text.format"),
        ({"n": 2}, "n"),
    ],
)
async def test_refused_with_the_parameter_named(client: TestClient, extra: dict[str, Any], param: str) -> None:
    resp = await client.post(RESPONSES, json=ask(**extra))
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


async def test_accepted_and_ignored(client: TestClient) -> None:
    extra = {
        "store": False,
        "user": "u1",
        "safety_identifier": "s1",
        "prompt_cache_key": "k",
        "include": ["reasoning.encrypted_content"],
        "truncation": "disabled",
        "reasoning": {"effort": None},
        "parallel_tool_calls": False,
        "max_tool_calls": 3,
        "text": {"format": {"type": "text"}, "verbosity": "low"},
        "tool_choice": "auto",
        "service_tier": "auto",
        "stream_options": {"include_obfuscation": False},
    }
    resp = await client.post(RESPONSES, json=ask(**extra))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["user"] == "u1" and body["parallel_tool_calls"] is False and body["text"]["verbosity"] == "low"


async def test_the_official_sdk_raises_on_the_error_event(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_after = 3
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as err:
        async with sdk.responses.stream(model=MODEL, input="Say hello.") as stream:
            async for event in stream:
                seen.append(event.type)
    assert "boom" in err.value.message and err.value.code == "upstream_error"
    assert "response.output_text.delta" in seen  # the text before the failure went out
    await sdk.close()
