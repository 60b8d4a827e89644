"""The official openai SDK, unmodified, against the real stack (Triton + SmolLM2 on CPU)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.e2e.conftest import MODEL, Stack

pytestmark = pytest.mark.e2e

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
COUNT = [{"role": "user", "content": "Write three short sentences about the sea."}]


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=120)


def test_greedy_chat_matches_the_reference_model(sdk: openai.OpenAI) -> None:
    # the reference: the same GGUF run by Hugging Face transformers in float32, greedy
    resp = sdk.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40)  # type: ignore[arg-type]
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "The capital of France is Paris."
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 37  # the chat template adds SmolLM's default system prompt
    assert resp.usage.completion_tokens == 7  # 7 tokens of text; the end token is not counted
    assert resp.usage.total_tokens == 44


def test_streamed_text_equals_the_whole_response(sdk: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": COUNT, "temperature": 0, "max_tokens": 48}
    whole = sdk.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(sdk.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_max_tokens_ends_with_length(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(model=MODEL, messages=COUNT, max_completion_tokens=5, temperature=0)  # type: ignore[arg-type]
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_stop_string_is_not_returned(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, stop=[" Paris", "zzz"])  # type: ignore[arg-type]
    assert resp.choices[0].message.content == "The capital of France is"
    assert resp.choices[0].finish_reason == "stop"
    stream = sdk.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, stop="France", stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The capital of "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_choices_and_seeds(sdk: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": COUNT, "temperature": 1.0, "top_p": 0.95, "max_tokens": 12, "seed": 1234}
    first = sdk.chat.completions.create(**kwargs, n=2)  # type: ignore[call-overload]
    assert [c.index for c in first.choices] == [0, 1]
    assert all(c.message.content for c in first.choices)
    again = sdk.chat.completions.create(**kwargs, n=2)  # type: ignore[call-overload]
    assert [c.message.content for c in again.choices] == [c.message.content for c in first.choices]
    assert first.usage is not None and 2 <= first.usage.completion_tokens <= 24
    assert first.usage.prompt_tokens == again.usage.prompt_tokens  # type: ignore[union-attr]


def test_completions_sync_and_streaming(sdk: openai.OpenAI) -> None:
    resp = sdk.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=6, temperature=0, echo=True)
    # the reference's first two greedy tokens; int8 and float32 part ways on a near tie after them
    assert resp.choices[0].text.startswith("The quick brown fox with a ")
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.prompt_tokens == 4 and resp.usage.completion_tokens == 6
    pieces = list(
        sdk.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=6, temperature=0, stream=True)
    )
    assert "".join(p.choices[0].text for p in pieces) == resp.choices[0].text.removeprefix("The quick brown fox")


def test_models_endpoint(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == [MODEL, "synthetic", "all-minilm-l6-v2", "whisper-base"]
    assert sdk.models.retrieve(MODEL).id == MODEL


def test_errors_through_the_sdk(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        sdk.chat.completions.create(model="no-such-model", messages=FRANCE)  # type: ignore[arg-type]
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=MODEL, messages=FRANCE, temperature=5)  # type: ignore[arg-type]
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as unsupported:
        sdk.chat.completions.create(model=MODEL, messages=FRANCE, extra_body={"best_of": 2})  # type: ignore[arg-type]
    assert unsupported.value.param == "best_of"


async def test_eight_concurrent_streams_async_sdk(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=300)

    async def one() -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=0,
            max_tokens=16,
            stream=True,  # type: ignore[arg-type]
        )
        text, reason = [], None
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                reason = chunk.choices[0].finish_reason or reason
        return "".join(text), reason

    results = await asyncio.gather(*(one() for _ in range(8)))
    await client.close()
    assert results == [("The capital of France is Paris.", "stop")] * 8
