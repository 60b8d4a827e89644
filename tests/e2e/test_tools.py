"""Tool calls against the real CPU model: the generic format (its template has no tool support),
held to the tools' schemas by constrained decoding; the official SDK and LangChain as clients."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import MODEL, Stack

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
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
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}  # type: ignore[index]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=300)


def check_calls(calls: list[Any], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("stream", [False, True])
def test_required_is_always_a_valid_call(sdk: openai.OpenAI, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "n": 2,
        "temperature": 0.7,
        "seed": 3,
        "max_tokens": 120,
    }
    if not stream:
        resp = sdk.chat.completions.create(**kwargs)
        for choice in resp.choices:
            assert choice.finish_reason == "tool_calls"
            assert not choice.message.content
            check_calls(choice.message.tool_calls or [], {"get_weather", "get_time"})
        return
    # streamed: the first delta of each call carries index, id, type and name; the rest only arguments
    calls: dict[tuple[int, int], dict[str, str]] = {}
    content = ["", ""]
    reasons: list[str | None] = [None, None]
    for chunk in sdk.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            content[c.index] += c.delta.content or ""
            reasons[c.index] = c.finish_reason or reasons[c.index]
            for piece in c.delta.tool_calls or ():
                key = (c.index, piece.index)
                if key not in calls:
                    assert piece.id and piece.type == "function" and piece.function and piece.function.name
                    calls[key] = {"name": piece.function.name, "arguments": piece.function.arguments or ""}
                else:
                    assert piece.id is None and piece.function is not None and piece.function.name is None
                    calls[key]["arguments"] += piece.function.arguments or ""
    assert reasons == ["tool_calls", "tool_calls"] and content == ["", ""]
    assert {i for i, _ in calls} == {0, 1}
    for call in calls.values():
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_named_choice_calls_that_function(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
    )
    calls = resp.choices[0].message.tool_calls or []
    assert len(calls) == 1 and resp.choices[0].finish_reason == "tool_calls"
    check_calls(calls, {"get_time"})


def test_sdk_stream_helper_reassembles_the_calls(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.stream(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
    ) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    check_calls(calls, {"get_weather"})
    assert len(done) == len(calls) and json.loads(done[0].arguments) == json.loads(calls[0].function.arguments)


def test_auto_and_none(sdk: openai.OpenAI) -> None:
    auto = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=80)  # type: ignore[arg-type]
    choice = auto.choices[0]
    if choice.message.tool_calls:  # the model chose to call: the call is held to its schema
        assert choice.finish_reason == "tool_calls"
        check_calls(choice.message.tool_calls, {"get_weather", "get_time"})
    else:
        assert choice.message.content and "<tool_call>" not in choice.message.content
    none = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    assert not none.choices[0].message.tool_calls and none.choices[0].finish_reason in ("stop", "length")


def test_tool_results_round_trip(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0)  # type: ignore[arg-type]
    call = (first.choices[0].message.tool_calls or [])[0]
    messages: list[Any] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    second = sdk.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=40)
    assert second.choices[0].message.content and second.choices[0].finish_reason in ("stop", "length")


def test_bad_tool_requests_name_the_parameter(sdk: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]}, "tools"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            sdk.chat.completions.create(model=MODEL, messages=ASK, **extra)  # type: ignore[arg-type]
        assert err.value.body["param"] == param, extra  # type: ignore[index]


class Capital(BaseModel):
    """The capital city of a country."""

    country: str = Field(max_length=20)
    capital: str = Field(max_length=20)


def test_langchain_structured_output_and_bind_tools(stack: Stack) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=stack.v1, api_key="unused", temperature=0, max_retries=0, timeout=300)  # type: ignore[arg-type]
    question = "What is the capital of France?"
    for method in ("json_schema", "function_calling"):
        result = llm.with_structured_output(Capital, method=method).invoke(question)  # type: ignore[arg-type]
        assert isinstance(result, Capital), method
    as_dict = llm.with_structured_output(Capital.model_json_schema(), method="json_mode").invoke(
        question + " Answer in JSON."
    )
    assert isinstance(as_dict, dict)

    bound = llm.bind_tools([WEATHER], tool_choice="get_weather")
    reply = bound.invoke([HumanMessage("What is the weather in Berlin?")])
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(reply.tool_calls[0]["args"], SCHEMAS["get_weather"])
    result = ToolMessage(content='{"temperature": 12}', tool_call_id=reply.tool_calls[0]["id"])
    answer = llm.bind_tools([WEATHER]).invoke([HumanMessage("What is the weather in Berlin?"), reply, result])
    assert answer.content or answer.tool_calls
