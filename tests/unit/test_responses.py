"""The Responses API without I/O: a request translated into chat's plan inputs, and the events and
Response objects built from the generate path's deltas."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.api.body import parse
from gateway.api.responses import (
    chat_messages,
    output_shape,
    refuse_unsupported,
    response_format,
    response_id,
)
from gateway.api.responses_events import ResponseEvents
from gateway.api.responses_schema import ResponsesRequest
from gateway.core.types import ChoiceOutput, Delta, FinishReason, ToolCallDelta, ToolChoice, Usage
from gateway.errors import InvalidRequest, UnsupportedParameter, UpstreamError

TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def request(**fields: Any) -> ResponsesRequest:
    return parse(ResponsesRequest, {"model": "m", "input": "hi", **fields}, unsupported={})


def events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            kind, data = block.split("\n")
            event = orjson.loads(data.removeprefix("data: "))
            assert kind == f"event: {event['type']}"
            out.append(event)
    return out


def kinds(raw: bytes) -> list[str]:
    return [e["type"] for e in events(raw)]


def new_events() -> ResponseEvents:
    return ResponseEvents("resp_1", 1700000000, "m", {"store": False})


# the request, as chat's planner takes it


def test_string_input_and_instructions() -> None:
    assert chat_messages(request(instructions="Be brief.")) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert chat_messages(request()) == [{"role": "user", "content": "hi"}]


def call_item(call_id: str, name: str, arguments: str = "{}", **more: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, **more}


def chat_call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_items_become_messages_calls_and_tool_results() -> None:
    paris = '{"city":"Paris"}'
    parts = [{"type": "input_text", "text": "Weather "}, {"type": "input_text", "text": "in Paris?"}]
    said = {"type": "output_text", "text": "Let me look.", "annotations": [], "logprobs": []}
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": parts},
        # an earlier response's output sent back as it came, unknown fields and all
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [said]},
        call_item("call_1", "get_weather", paris, id="fc_1", status="completed"),
        call_item("call_2", "get_time"),
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
        call_item("call_3", "get_time"),
    ]
    assert chat_messages(request(input=items)) == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [chat_call("call_1", "get_weather", paris), chat_call("call_2", "get_time")],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "assistant", "content": "", "tool_calls": [chat_call("call_3", "get_time")]},
    ]


def test_text_format_is_chats_response_format() -> None:
    assert response_format(request()) is None
    assert response_format(request(text={"format": {"type": "text"}})) is None
    assert response_format(request(text={"format": {"type": "json_object"}})) == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    given = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    assert response_format(request(text={"format": given})) == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }


def test_tools_and_tool_choice() -> None:
    shape = output_shape(request(tools=[TOOL], tool_choice="required", parallel_tool_calls=False))
    assert [t.name for t in shape.tools] == ["get_weather"] and shape.tools[0].parameters == {"type": "object"}
    assert shape.tool_choice == ToolChoice("required") and not shape.parallel_tool_calls
    named = output_shape(request(tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"}))
    assert named.tool_choice == ToolChoice("named", "get_weather")
    assert output_shape(request(tools=[TOOL])).tool_choice == ToolChoice("auto")
    assert output_shape(request(tool_choice="auto")).tool_choice == ToolChoice("none")  # nothing to call
    assert output_shape(request(text={"format": {"type": "json_object"}})).format_param == "text.format"
    with pytest.raises(InvalidRequest) as err:
        output_shape(request(tools=[TOOL], tool_choice={"type": "function", "name": "nope"}))
    assert err.value.param == "tool_choice"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": {"id": "conv_1"}}, "conversation"),
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"truncation": "auto"}, "truncation"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"service_tier": "flex"}, "service_tier"),
    ],
)
def test_what_needs_state_or_a_missing_feature_is_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as err:
        refuse_unsupported(request(**fields))
    assert err.value.param == param


def test_store_false_and_harmless_fields_pass() -> None:
    refuse_unsupported(
        request(
            store=False,
            metadata={"a": "b"},
            reasoning={"effort": None},
            include=["reasoning.encrypted_content"],
            truncation="disabled",
            top_logprobs=0,
            service_tier="auto",
        )
    )


def test_response_id_keeps_the_plans_hex() -> None:
    assert response_id("chatcmpl-0123abcd") == "resp_0123abcd"


# the events


def test_text_stream_events() -> None:
    fmt = new_events()
    opening = events(fmt.opening(0))
    assert [e["type"] for e in opening] == ["response.created", "response.in_progress"]
    assert opening[0]["response"]["status"] == "in_progress" and opening[0]["response"]["output"] == []
    assert opening[0]["response"]["usage"] is None and opening[0]["response"]["store"] is False
    first = events(fmt.delta(0, "Hel"))
    assert [e["type"] for e in first] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    item = first[0]["item"]
    assert item == {"id": item["id"], "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    assert first[1]["part"] == {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    text = 'lo " \\ \n 😀'
    (delta,) = events(fmt.delta(0, text))
    assert delta == {
        "type": "response.output_text.delta",
        "sequence_number": 5,
        "item_id": item["id"],
        "output_index": 0,
        "content_index": 0,
        "delta": text,
        "logprobs": [],
    }
    assert fmt.delta(0, "") == b""
    done = events(fmt.finish(0, FinishReason.STOP))
    assert [e["type"] for e in done] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert done[0]["text"] == "Hel" + text and done[2]["item"]["status"] == "completed"
    (completed,) = events(fmt.closing(Usage(3, 4), include_usage=False))
    assert completed["type"] == "response.completed" and completed["sequence_number"] == 9
    response = completed["response"]
    assert response["status"] == "completed" and response["output"] == [done[2]["item"]]
    assert response["usage"] == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }


def test_length_cut_ends_incomplete() -> None:
    fmt = new_events()
    fmt.opening(0)
    fmt.delta(0, "abc")
    done = events(fmt.finish(0, FinishReason.LENGTH))
    assert done[-1]["item"]["status"] == "incomplete"
    (end,) = events(fmt.closing(Usage(1, 2), include_usage=False))
    assert end["type"] == "response.incomplete"
    assert end["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_an_empty_answer_is_an_empty_message() -> None:
    fmt = new_events()
    fmt.opening(0)
    assert kinds(fmt.finish(0, FinishReason.STOP)) == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]


def test_calls_stream_as_function_call_items() -> None:
    fmt = new_events()
    fmt.opening(0)
    out = events(fmt.rich(Delta(0, "Sure.", tool_calls=[ToolCallDelta(0, "call_a", "get_weather", '{"ci')])))
    assert [e["type"] for e in out] == [
        "response.output_item.added",  # the message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",  # ends before the call begins
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # the call
        "response.function_call_arguments.delta",
    ]
    call = out[6]["item"]
    assert call == {
        "id": call["id"],
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_a",
        "name": "get_weather",
        "arguments": "",
    }
    assert call["id"].startswith("fc_") and out[6]["output_index"] == 1
    # the end of the first call's arguments and the next call, in one delta
    pieces = [ToolCallDelta(0, arguments='ty":"Paris"}'), ToolCallDelta(1, "call_b", "get_time", "{}")]
    out = events(fmt.rich(Delta(0, "", FinishReason.TOOL_CALLS, tool_calls=pieces)))
    assert [e["type"] for e in out] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert out[1]["arguments"] == '{"city":"Paris"}' and out[1]["name"] == "get_weather"
    assert out[2]["item"]["arguments"] == '{"city":"Paris"}' and out[2]["item"]["status"] == "completed"
    assert out[3]["output_index"] == 2 and out[6]["item"]["call_id"] == "call_b"
    (completed,) = events(fmt.closing(Usage(1, 1), include_usage=False))
    output = completed["response"]["output"]
    assert [i["type"] for i in output] == ["message", "function_call", "function_call"]
    numbers = [e["sequence_number"] for e in [*out, completed]]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_failure_is_an_error_event_then_response_failed() -> None:
    fmt = new_events()
    fmt.opening(0)
    fmt.delta(0, "partial")
    error, failed = events(fmt.failure(UpstreamError("upstream failed: boom")))
    assert error["type"] == "error" and error["sequence_number"] == 5
    assert error["code"] == "upstream_error" and error["message"] == "upstream failed: boom" and error["param"] is None
    assert error["error"] == {  # OpenAI's servers nest it; the SDKs raise on it
        "message": "upstream failed: boom",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_error",
    }
    response = failed["response"]
    assert response["status"] == "failed" and response["error"] == {"code": "server_error", "message": error["message"]}
    assert response["output"][0]["status"] == "incomplete" and response["output"][0]["content"][0]["text"] == "partial"


def test_whole_response_matches_the_streamed_one() -> None:
    output = ChoiceOutput(["Hello", "!"])
    whole = new_events().whole([output], Usage(2, 3))
    streamed = new_events()
    streamed.opening(0)
    streamed.delta(0, "Hello")
    streamed.delta(0, "!")
    streamed.finish(0, FinishReason.STOP)
    (end,) = events(streamed.closing(Usage(2, 3), include_usage=False))

    def same(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "completed_at": None, "output": [{**i, "id": None} for i in r["output"]]}

    assert same(whole) == same(end["response"])
    assert whole["id"] == "resp_1" and whole["object"] == "response" and whole["created_at"] == 1700000000


def test_whole_response_with_calls() -> None:
    output = ChoiceOutput([""], FinishReason.TOOL_CALLS)
    output.add(Delta(0, "", tool_calls=[ToolCallDelta(0, "call_a", "get_weather", '{"city":"Paris"}')]))
    body = new_events().whole([output], Usage(1, 1))
    (call,) = body["output"]  # no text: no message
    assert call["type"] == "function_call" and call["call_id"] == "call_a" and call["status"] == "completed"
    assert call["arguments"] == '{"city":"Paris"}' and body["status"] == "completed"
    cut = new_events().whole([ChoiceOutput(["abc"], FinishReason.LENGTH)], Usage(1, 3))
    assert cut["status"] == "incomplete" and cut["output"][0]["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
