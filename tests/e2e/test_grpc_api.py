"""The gateway's gRPC API with a real grpc client against the real stack."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.grpcapi.stubs import pb, pb_grpc
from tests.e2e.conftest import MODEL, Stack, cancelled_after
from tests.sse import chat_text, parse_sse

pytestmark = pytest.mark.e2e

QUESTION = "Write three short sentences about the sea."


async def test_streamed_text_identical_to_rest(stack: Stack) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    body |= {"max_tokens": 40, "stream": True}
    async with aiohttp.ClientSession() as session, session.post(stack.v1 + "/chat/completions", json=body) as resp:
        rest_text = chat_text(parse_sse(await resp.read()))
    request = pb.ChatCompletionRequest(
        model=MODEL,
        messages=[pb.ChatMessage(role="user", content=QUESTION)],
        sampling=pb.SamplingParams(temperature=0, max_tokens=40),
    )
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        chunks = [c async for c in stub.StreamChatCompletion(request)]
        whole = await stub.ChatCompletion(request)
    assert "".join(c.text for c in chunks) == rest_text == whole.choices[0].text
    assert chunks[-1].usage == whole.usage and whole.usage.completion_tokens > 0
    tokens = await _tokenize(stack, QUESTION)
    assert whole.usage.prompt_tokens == tokens


async def _tokenize(stack: Stack, text: str) -> int:
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        messages = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=text)])
        resp = await stub.Tokenize(pb.TokenizeRequest(model=MODEL, messages=messages))
        listed = await stub.ListModels(pb.ListModelsRequest())
    assert [m.id for m in listed.models] == [MODEL, "synthetic", "all-minilm-l6-v2", "whisper-base"]
    assert [m.task for m in listed.models] == ["chat", "chat", "embedding", "transcription"]
    assert "embeddings" in listed.models[2].capabilities
    return int(resp.count)


async def test_cancel_and_deadline_reach_the_model(stack: Stack) -> None:
    request = pb.CompletionRequest(model="synthetic", text="go", sampling=pb.SamplingParams(max_tokens=4000))
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        call = stub.StreamCompletion(request)
        first = await call.read()
        await call.read()
        call.cancel()
        assert await cancelled_after(stack, f"{first.id}-0") < 4000
        ids: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for chunk in stub.StreamCompletion(request, timeout=0.5):
                ids.append(chunk.id)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await cancelled_after(stack, f"{ids[0]}-0") < 4000


async def test_errors_health_and_reflection(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        stub = pb_grpc.LLMGatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Completion(pb.CompletionRequest(model="nope", text="x"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Completion(pb.CompletionRequest(model=MODEL, text="x", sampling=pb.SamplingParams(top_p=2)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = [a async for a in refl.ServerReflectionInfo(iter([req]))]
        assert "llmgateway.v1.LLMGateway" in {s.name for s in answers[0].list_services_response.service}
        # the server keeps serving after errors
        ok = await stub.Completion(
            pb.CompletionRequest(model="synthetic", text="x", sampling=pb.SamplingParams(max_tokens=3))
        )
        assert ok.usage.completion_tokens == 3
    await asyncio.sleep(0)
