"""POST /v1/responses with the official openai SDK, unmodified, against the real stack (Triton +
SmolLM2 on CPU): the same generate path as chat, stateless."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import MODEL, Stack

pytestmark = pytest.mark.e2e

FRANCE = "What is the capital of France?"
SEA = "Write three short sentences about the sea."
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Berlin"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=300)


def comparable(response: Any) -> dict[str, Any]:
    """A response as JSON, without what differs between two runs of one request (ids, times)."""
    out: dict[str, Any] = response.model_dump(exclude={"id", "created_at", "completed_at"})
    out["output"] = [{k: v for k, v in item.items() if k not in ("id", "call_id")} for item in out["output"]]
    for item in out["output"]:  # the stream helper's ParsedResponse adds `parsed` (None) to text parts
        item["content"] = [{k: v for k, v in part.items() if k != "parsed"} for part in item.get("content", ())]
    return out


def test_plain_text_is_chats_answer(sdk: openai.OpenAI) -> None:
    resp = sdk.responses.create(model=MODEL, input=FRANCE, temperature=0, max_output_tokens=40)
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.status == "completed"
    assert resp.output_text == "The capital of France is Paris."  # chat's reference answer (test_openai_sdk)
    (message,) = resp.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (37, 7, 44)
    assert resp.usage.input_tokens_details.cached_tokens == 0
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    assert resp.store is False and resp.previous_response_id is None and resp.max_output_tokens == 40
    assert resp.temperature == 0 and resp.tools == [] and resp.parallel_tool_calls is True


def test_instructions_are_the_system_message(sdk: openai.OpenAI) -> None:
    system = "You are a geography teacher. Answer in one short sentence."
    resp = sdk.responses.create(model=MODEL, instructions=system, input=FRANCE, temperature=0, max_output_tokens=40)
    chat = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": FRANCE}],
        temperature=0,
        max_tokens=40,
    )
    assert resp.instructions == system
    assert resp.output_text == chat.choices[0].message.content
    assert resp.usage is not None and chat.usage is not None
    assert resp.usage.input_tokens == chat.usage.prompt_tokens != 37  # SmolLM's default system prompt is replaced


def test_max_output_tokens_makes_it_incomplete(sdk: openai.OpenAI) -> None:
    resp = sdk.responses.create(model=MODEL, input=SEA, temperature=0, max_output_tokens=5)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and resp.usage.output_tokens == 5
    assert resp.output_text and resp.output[0].status == "incomplete"


def test_json_schema_output_validates(sdk: openai.OpenAI) -> None:
    resp = sdk.responses.create(
        model=MODEL,
        input="Describe a person who lives in a European capital, as JSON.",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
        temperature=0,
        max_output_tokens=200,
    )
    assert resp.status == "completed", resp.output_text
    jsonschema.validate(json.loads(resp.output_text), PERSON)
    assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "json_schema"


class Capital(BaseModel):
    country: str = Field(max_length=20)
    capital: str = Field(max_length=20)


def test_sdk_parse_with_a_pydantic_model(sdk: openai.OpenAI) -> None:
    resp = sdk.responses.parse(model=MODEL, input=FRANCE, text_format=Capital, temperature=0, max_output_tokens=100)
    assert isinstance(resp.output_parsed, Capital)


def test_required_tool_call_then_its_output(sdk: openai.OpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    first = sdk.responses.create(
        model=MODEL,
        input=ask,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,  # one call (left free, this small model calls again and again)
        temperature=0,
    )
    assert first.status == "completed" and first.output_text == "" and first.parallel_tool_calls is False
    (call,) = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
    assert call.id is not None and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])  # type: ignore[arg-type]
    # the result goes back with the whole conversation: nothing is stored between the two requests
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21, "sky": "sunny"}'}
    second = sdk.responses.create(
        model=MODEL,
        input=[*ask, *first.output, result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=40,
    )
    assert [item.type for item in second.output] == ["message"] and second.output_text


def test_stream_equals_the_whole_response(sdk: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "input": SEA, "temperature": 0, "max_output_tokens": 160}
    whole = sdk.responses.create(**kwargs)
    with sdk.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
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
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.output_text == whole.output_text
    assert comparable(final) == comparable(whole)


def test_streamed_function_call(sdk: openai.OpenAI) -> None:
    with sdk.responses.stream(
        model=MODEL,
        input="What is the weather like in Berlin?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [item.type for item in added] == ["function_call"]
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert done.arguments == arguments == call.arguments
    jsonschema.validate(json.loads(arguments), WEATHER["parameters"])  # type: ignore[arg-type]


def test_what_needs_stored_state_is_a_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as previous:
        sdk.responses.create(model=MODEL, input=FRANCE, previous_response_id="resp_0123")
    assert previous.value.param == "previous_response_id" and "stores no responses" in previous.value.message
    with pytest.raises(openai.BadRequestError) as stored:
        sdk.responses.create(model=MODEL, input=FRANCE, store=True)
    assert stored.value.param == "store" and "not stored" in stored.value.message
    with pytest.raises(openai.BadRequestError) as background:
        sdk.responses.create(model=MODEL, input=FRANCE, background=True)
    assert background.value.param == "background"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.create(model="no-such-model", input=FRANCE)
    assert missing.value.code == "model_not_found"
