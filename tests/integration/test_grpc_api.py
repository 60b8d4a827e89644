"""The gRPC API in-process over the fake engine: every RPC, the error table, health, reflection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from gateway.errors import RateLimited
from gateway.grpcapi.errors import status_of
from gateway.grpcapi.stubs import pb, pb_grpc
from gateway.text.tokenizer import Tokenizer
from perf.stack import free_port
from tests.conftest import WEIGHTS
from tests.integration.conftest import MODEL, REPLY
from tests.integration.fake_engine import FakeEngine


@pytest.fixture
async def channel(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine
) -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    config = GatewayConfig(
        grpc_port=port,
        models=[ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_output_tokens=256)],
    )
    await aiohttp_client(create_app(config, lambda url: engine))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.LLMGatewayStub:
    return pb_grpc.LLMGatewayStub(channel)


def chat(**sampling: object) -> pb.ChatCompletionRequest:
    return pb.ChatCompletionRequest(
        model=MODEL,
        messages=[pb.ChatMessage(role="user", content="Hi")],
        sampling=pb.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def test_chat_unary_and_stream(stub: pb_grpc.LLMGatewayStub, tokenizer: Tokenizer) -> None:
    whole = await stub.ChatCompletion(chat())
    assert whole.id.startswith("chatcmpl-") and whole.model == MODEL
    assert whole.choices[0].text == REPLY
    assert whole.choices[0].finish_reason == pb.FINISH_REASON_STOP
    assert whole.usage.completion_tokens == len(tokenizer.encode(REPLY))
    chunks = [c async for c in stub.StreamChatCompletion(chat())]
    assert "".join(c.text for c in chunks) == REPLY
    assert chunks[-2].finish_reason == pb.FINISH_REASON_STOP
    assert chunks[-1].HasField("usage") and chunks[-1].usage == whole.usage


async def test_completion_stop_length_n_echo(stub: pb_grpc.LLMGatewayStub, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Say")
    req = pb.CompletionRequest(
        model=MODEL, token_ids=pb.TokenIds(ids=ids), n=2, echo=True, sampling=pb.SamplingParams(max_tokens=3)
    )
    resp = await stub.Completion(req)
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.text == "Say" + tokenizer.decode(tokenizer.encode(REPLY)[:3]) for c in resp.choices)
    assert all(c.finish_reason == pb.FINISH_REASON_LENGTH for c in resp.choices)
    assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens == 6
    stopped = await stub.Completion(
        pb.CompletionRequest(model=MODEL, text="x", sampling=pb.SamplingParams(stop=["END"], max_tokens=100))
    )
    assert stopped.choices[0].text == "Hello there! Café 😀 costs 12€. "
    chunks = [c async for c in stub.StreamCompletion(pb.CompletionRequest(model=MODEL, text="x", echo=True))]
    assert chunks[0].text == "x"


async def test_models_tokenize_detokenize(stub: pb_grpc.LLMGatewayStub, tokenizer: Tokenizer) -> None:
    models = await stub.ListModels(pb.ListModelsRequest())
    assert [m.id for m in models.models] == [MODEL]
    assert models.models[0].context_length > 0 and models.models[0].max_output_tokens == 256
    tok = await stub.Tokenize(pb.TokenizeRequest(model=MODEL, text="Héllo 😀"))
    assert list(tok.ids) == tokenizer.encode("Héllo 😀") and tok.count == len(tok.ids)
    messages = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Hi")])
    tok = await stub.Tokenize(pb.TokenizeRequest(model=MODEL, messages=messages))
    assert tok.count == (await stub.ChatCompletion(chat(max_tokens=1))).usage.prompt_tokens
    text = await stub.Detokenize(pb.DetokenizeRequest(model=MODEL, ids=tokenizer.encode("Héllo 😀")))
    assert text.text == "Héllo 😀"


@pytest.mark.parametrize(
    ("request_", "code", "param"),
    [
        (
            pb.ChatCompletionRequest(model="nope", messages=[pb.ChatMessage(role="user", content="x")]),
            "NOT_FOUND",
            "model",
        ),
        (pb.ChatCompletionRequest(model=MODEL), "INVALID_ARGUMENT", "messages"),
        (
            pb.ChatCompletionRequest(model=MODEL, messages=[pb.ChatMessage(role="robot", content="x")]),
            "INVALID_ARGUMENT",
            "messages.0.role",
        ),
        (chat(temperature=3.0), "INVALID_ARGUMENT", "sampling.temperature"),
        (chat(max_tokens=100000), "INVALID_ARGUMENT", "sampling.max_tokens"),
        (chat(top_logprobs=2), "INVALID_ARGUMENT", "sampling.top_logprobs"),
        (chat(stop=["a", "b", "c", "d", "e"]), "INVALID_ARGUMENT", "sampling.stop"),
    ],
)
async def test_errors_map_to_status_codes(
    stub: pb_grpc.LLMGatewayStub, request_: pb.ChatCompletionRequest, code: str, param: str
) -> None:
    for call in (stub.ChatCompletion(request_), _drain(stub.StreamChatCompletion(request_))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode[code]
        trailers = dict(err.value.trailing_metadata() or ())
        assert trailers["error-param"] == param
        assert err.value.details()


async def _drain(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
    async for _ in call:
        pass


# not a protobuf message: a truncated length-delimited field, a bad wire type, invalid UTF-8 in a string
GARBAGE = (b"\x0a\xff\xff", b"\xff\xff\xff\xff", b"\x0a\x02\xc3\x28")


@pytest.mark.parametrize("method", ["ChatCompletion", "Completion", "Tokenize", "StreamChatCompletion"])
@pytest.mark.parametrize("raw", GARBAGE)
async def test_malformed_protobuf_is_invalid_argument(channel: grpc.aio.Channel, method: str, raw: bytes) -> None:
    path = f"/llmgateway.v1.LLMGateway/{method}"
    call = (
        _drain(channel.unary_stream(path)(raw))
        if method.startswith("Stream")
        else channel.unary_unary(path)(raw)  # no serializers: the raw bytes go out as they are
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert details.startswith("The request is not a valid llmgateway.v1.") and "protobuf message" in details
    assert "Error" not in details and "<class" not in details  # no Python exception leaks out
    assert dict(err.value.trailing_metadata() or ())["error-code"] == "malformed_request"


async def test_upstream_unavailable(stub: pb_grpc.LLMGatewayStub, engine: FakeEngine) -> None:
    engine.unavailable = True
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ChatCompletion(chat())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(err.value.trailing_metadata() or ())["error-code"] == "upstream_unavailable"


async def test_mid_stream_failure_ends_with_a_status(stub: pb_grpc.LLMGatewayStub, engine: FakeEngine) -> None:
    engine.fail_after = 3
    texts = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for chunk in stub.StreamChatCompletion(chat()):
            texts.append(chunk.text)
    assert err.value.code() == grpc.StatusCode.INTERNAL and texts


def test_rate_limit_status_carries_retry_info() -> None:
    status = status_of(RateLimited("slow down", retry_after=3))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    rich = rpc_status.from_call(_Call(status))
    assert rich is not None
    info = error_details_pb2.RetryInfo()
    assert rich.details[0].Unpack(info) and info.retry_delay.seconds == 3


class _Call:
    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> object:
        return self._status.trailing_metadata


async def test_health_and_reflection(channel: grpc.aio.Channel, engine: FakeEngine) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="llmgateway.v1.LLMGateway"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [
        r async for r in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    ]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"llmgateway.v1.LLMGateway", "grpc.health.v1.Health"} <= names
