"""The synthetic benchmark upstream behind the gateway: exact lengths, fixed text, cancellation."""

from __future__ import annotations

import re

import aiohttp
import openai
import pytest

from tests.e2e.conftest import Stack, cancelled_after
from tests.sse import chat_text, finish_reasons, parse_sse

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "anything"}]


def test_exact_length_and_deterministic_text(stack: Stack) -> None:
    sdk = openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0)
    resp = sdk.chat.completions.create(model="synthetic", messages=MESSAGES, max_tokens=23)  # type: ignore[arg-type]
    assert resp.usage is not None and resp.usage.completion_tokens == 23
    assert resp.choices[0].finish_reason == "length"
    text = resp.choices[0].message.content or ""
    assert text.startswith(" the quick brown fox jumps over the lazy dog. the quick brown")
    again = sdk.chat.completions.create(model="synthetic", messages=MESSAGES, max_tokens=23)  # type: ignore[arg-type]
    assert again.choices[0].message.content == text


async def test_stream_and_cancellation(stack: Stack) -> None:
    body = {"model": "synthetic", "messages": MESSAGES, "stream": True, "max_tokens": 40}
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.v1 + "/chat/completions", json=body) as resp:
            events = parse_sse(await resp.read())
        assert finish_reasons(events) == {0: "length"}
        assert chat_text(events) == " the quick brown fox jumps over the lazy dog." * 4  # 10 tokens each
        resp = await session.post(stack.v1 + "/chat/completions", json={**body, "max_tokens": 100000 // 25})
        first = await resp.content.readuntil(b"\n\n")
        await resp.content.readuntil(b"\n\n")
        resp.close()
    request_id = re.search(rb'"id":"([^"]+)"', first)
    assert request_id is not None
    assert await cancelled_after(stack, f"{request_id.group(1).decode()}-0") < 4000
