"""A huge prompt is templated and tokenized off the event loop: the process keeps answering.

The model's tokenizer is wrapped so that tokenizing the huge prompt first waits until /health has
been answered: on the event loop that could never happen (the loop is what answers /health), on a
worker thread it does. No clock is read: the wait is an event, with a 60 s fallback that fails.
Then the real tokenization runs (about a second for 3 MB), and /health must keep answering during
it: a tokenizer call that held the GIL throughout would let through only a handful.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.api.context import REGISTRY
from gateway.config import GatewayConfig, ModelConfig
from tests.conftest import WEIGHTS
from tests.integration.fake_engine import FakeEngine

BIG = 3_000_000  # characters
WORDS = "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (BIG // 57)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_health_answers_while_a_huge_prompt_is_tokenized(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine, endpoint: str
) -> None:
    config = GatewayConfig(
        grpc_port=None,
        max_body_bytes=2 * BIG,
        models=[
            ModelConfig(
                id="big", triton_model="smollm2", tokenizer_dir=WEIGHTS, context_length=10 * BIG, max_output_tokens=8
            )
        ],
    )
    client = await aiohttp_client(create_app(config, lambda url: engine))
    tokenizer = next(client.app[REGISTRY].models()).tokenizer
    tokenizing, health_answered = threading.Event(), threading.Event()
    saw_health: list[bool] = []
    encode = tokenizer.encode_unlocked

    def held_encode(text: str) -> list[int]:
        if len(text) >= BIG // 2:
            tokenizing.set()
            saw_health.append(health_answered.wait(60))
        return encode(text)

    tokenizer.encode_unlocked = held_encode  # type: ignore[method-assign]
    if endpoint == "chat":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": WORDS}]}
    else:
        path, body = "/v1/completions", {"prompt": WORDS}
    request = asyncio.ensure_future(client.post(path, json={"model": "big", "max_tokens": 4, **body}))
    assert await asyncio.to_thread(tokenizing.wait, 60)
    assert (await client.get("/health")).status == 200
    health_answered.set()
    answered = 0
    while not request.done():  # the real tokenization runs now
        assert (await client.get("/health")).status == 200
        answered += 1
    # measured here: thousands with the GIL dropped, 5 or 6 with a tokenizer call that holds it
    assert answered >= 50, f"/health answered {answered} times while 3 MB were tokenized"
    resp = await request
    assert resp.status == 200, await resp.text()
    assert saw_health == [True]  # /health was answered while the prompt was being tokenized
    if endpoint == "chat":
        assert (await resp.json())["usage"]["prompt_tokens"] > BIG // 10  # tokenized in full


async def test_a_prompt_too_long_for_any_tokenization_is_refused_before_tokenizing(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine
) -> None:
    config = GatewayConfig(
        grpc_port=None,
        max_body_bytes=2 * BIG,
        models=[ModelConfig(id="small", triton_model="smollm2", tokenizer_dir=WEIGHTS, context_length=1024)],
    )
    client = await aiohttp_client(create_app(config, lambda url: engine))
    body = {"model": "small", "messages": [{"role": "user", "content": "x" * BIG}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert f"{BIG} characters" in error["message"]
