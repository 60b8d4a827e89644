"""Structured outputs, tools and logprobs over the gateway's gRPC API, against the real CPU model."""

from __future__ import annotations

import json

import grpc
import jsonschema
import pytest

from gateway.grpcapi.stubs import pb, pb_grpc
from tests.e2e.conftest import MODEL, Stack

pytestmark = pytest.mark.e2e

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
ASK = [pb.ChatMessage(role="user", content="Plan a trip: which city, and for how many days?")]


async def test_json_schema_streamed_and_whole(stack: Stack) -> None:
    request = pb.ChatCompletionRequest(
        model=MODEL,
        messages=ASK,
        sampling=pb.SamplingParams(temperature=0, max_tokens=80),
        response_format=pb.ResponseFormat(json_schema=pb.JsonSchema(name="trip", schema_json=json.dumps(CITY))),
        n=2,
    )
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        whole = await stub.ChatCompletion(request)
        chunks = [c async for c in stub.StreamChatCompletion(request)]
    for choice in whole.choices:
        assert choice.finish_reason == pb.FINISH_REASON_STOP
        jsonschema.validate(json.loads(choice.text), CITY)
    streamed = ["", ""]
    for chunk in chunks:
        streamed[chunk.index] += chunk.text
    assert streamed == [c.text for c in whole.choices]  # greedy: the same text either way


async def test_required_tool_call_and_logprobs(stack: Stack) -> None:
    request = pb.ChatCompletionRequest(
        model=MODEL,
        messages=ASK,
        sampling=pb.SamplingParams(temperature=0, max_tokens=80, logprobs=True, top_logprobs=2),
        tools=[pb.Tool(name="book_trip", description="Book a trip", parameters_json=json.dumps(CITY))],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
        parallel_tool_calls=False,  # exactly one call
    )
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        whole = await stub.ChatCompletion(request)
        chunks = [c async for c in stub.StreamChatCompletion(request)]
    choice = whole.choices[0]
    assert choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS and not choice.text
    (call,) = choice.tool_calls
    assert call.id.startswith("call_") and call.name == "book_trip"
    jsonschema.validate(json.loads(call.arguments), CITY)
    assert len(choice.logprobs) == whole.usage.completion_tokens
    assert all(lp.top[0].id == lp.id for lp in choice.logprobs)  # greedy: the sampled token is the top one
    pieces = [p for c in chunks for p in c.tool_calls]
    assert pieces[0].name == "book_trip" and pieces[0].id.startswith("call_")
    assert json.loads("".join(p.arguments for p in pieces)) == json.loads(call.arguments)
    assert sum(len(c.logprobs) for c in chunks) == whole.usage.completion_tokens


async def test_bad_schema_is_invalid_argument(stack: Stack) -> None:
    request = pb.ChatCompletionRequest(
        model=MODEL,
        messages=ASK,
        response_format=pb.ResponseFormat(json_schema=pb.JsonSchema(name="x", schema_json='{"type": "nonsense"}')),
    )
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.LLMGatewayStub(channel).ChatCompletion(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.value.trailing_metadata() or ())["error-param"] == "response_format"
