"""Logprobs and the rest of the sampling surface against the real CPU model."""

from __future__ import annotations

import math
import struct

import openai
import pytest

from tests.e2e.conftest import MODEL, Stack

pytestmark = pytest.mark.e2e

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=300)


def test_chat_logprobs_are_the_models_own(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    choice = resp.choices[0]
    assert choice.message.content == "The capital of France is Paris."  # logprobs change nothing
    entries = (choice.logprobs and choice.logprobs.content) or []
    assert resp.usage is not None and len(entries) == resp.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.bytes == list(e.token.encode())
        assert len(e.top_logprobs) == 5
        # greedy: the sampled token is the most likely one, with the same logprob
        assert e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-4)
        assert e.logprob <= 0.0
        assert sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1.0 + 1e-4


def test_streamed_logprobs_follow_the_text(sdk: openai.OpenAI) -> None:
    text, tokens = "", []
    for chunk in sdk.chat.completions.create(
        model=MODEL,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
    ):
        assert chunk.usage is not None  # continuous usage: on every chunk
        for c in chunk.choices:
            text += c.delta.content or ""
            tokens += [e.token for e in (c.logprobs.content or [])] if c.logprobs else []
    assert text == "The capital of France is Paris." and "".join(tokens) == text


def test_completion_logprobs_shape(sdk: openai.OpenAI) -> None:
    resp = sdk.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=3
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    assert "".join(lp.tokens) == resp.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert len(top) == 3 and max(top, key=top.__getitem__) == token


def token_ids(stack: Stack, text: str) -> list[int]:
    """The text's token ids, from the gateway's gRPC Tokenize."""
    import grpc

    from gateway.grpcapi.stubs import pb, pb_grpc

    with grpc.insecure_channel(stack.grpc_target) as channel:
        return list(pb_grpc.LLMGatewayStub(channel).Tokenize(pb.TokenizeRequest(model=MODEL, text=text)).ids)


def test_logit_bias_forbids_a_token(sdk: openai.OpenAI, stack: Stack) -> None:
    plain = sdk.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, logprobs=True)  # type: ignore[arg-type]
    entries = plain.choices[0].logprobs.content or []  # type: ignore[union-attr]
    paris = next(e for e in entries if e.token == " Paris")
    assert paris.logprob > -1.0  # the model's clear first choice
    ids = token_ids(stack, " Paris")
    assert len(ids) == 1
    biased = sdk.chat.completions.create(
        model=MODEL,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        logit_bias={str(ids[0]): -100},
    )
    got = biased.choices[0].logprobs.content or []  # type: ignore[union-attr]
    assert got and all(e.token != " Paris" for e in got)
    assert all(t.token != " Paris" for e in got for t in e.top_logprobs)


def test_sampling_surface_is_honoured(sdk: openai.OpenAI, stack: Stack) -> None:
    period = token_ids(stack, ".")
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        extra_body={"stop_token_ids": period},
    )
    assert (
        resp.choices[0].message.content == "The capital of France is Paris" and resp.choices[0].finish_reason == "stop"
    )
    for extra in ({"presence_penalty": 1.5}, {"frequency_penalty": 1.5}, {"extra_body": {"repetition_penalty": 1.3}}):
        r = sdk.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=30, **extra)  # type: ignore[arg-type]
        assert r.choices[0].message.content


def test_top_logprobs_without_logprobs_is_a_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=MODEL, messages=FRANCE, top_logprobs=2)  # type: ignore[arg-type]
    assert err.value.body["param"] == "top_logprobs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=MODEL, messages=FRANCE, logprobs=True, top_logprobs=21)  # type: ignore[arg-type]
    assert err.value.body["param"] == "top_logprobs"  # type: ignore[index]


async def test_token_logprobs_add_up_to_the_cumulative_logprob(stack: Stack) -> None:
    """Straight from Triton: the model's output_log_probs of a greedy sequence sum to its cum_log_probs."""
    import grpc
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

    from gateway.core.types import SamplingParams
    from gateway.engine.contract import ModelContract, build_request, is_final, parse_logprobs, parse_tokens

    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.triton_grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        config: model_config_pb2.ModelConfig = (
            await stub.ModelConfig(service_pb2.ModelConfigRequest(name="smollm2"))
        ).config
        contract = ModelContract.from_config(config)
        sampling = SamplingParams(max_tokens=24, temperature=0.0, logprobs=True)
        request = build_request(contract, "cum-1", [1, 9690, 198, 504, 3458, 282, 4649, 314], sampling, 2, 2)
        request.outputs.add().name = "cum_log_probs"
        call = stub.ModelStreamInfer()
        await call.write(request)
        await call.done_writing()
        logprobs: list[float] = []
        cumulative: list[float] = []
        async for message in call:
            assert not message.error_message
            response = message.infer_response
            ids = parse_tokens(response)
            logprobs += [t.logprob for t in parse_logprobs(response, ids, 0)]
            for i, out in enumerate(response.outputs):
                if out.name == "cum_log_probs" and ids:
                    cumulative.append(struct.unpack("<f", response.raw_output_contents[i][:4])[0])
            if is_final(response):
                break
    assert len(logprobs) >= 2 and cumulative
    assert math.fsum(logprobs) == pytest.approx(cumulative[-1], abs=1e-3)
