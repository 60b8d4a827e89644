"""Raw SSE, cancellation reaching the model, bad input and a dead Triton, against real processes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from gateway.embedded.tritonserver import TritonLaunchError, TritonPorts, TritonServer
from tests.conftest import MODEL_REPOSITORY
from tests.e2e.conftest import MODEL, Stack, cancelled_after, free_port, start_gateway, stop, wait_http
from tests.sse import chat_text, finish_reasons, parse_sse

pytestmark = pytest.mark.e2e

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}]}


async def test_raw_sse_stream(stack: Stack) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 20, "temperature": 0, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as session, session.post(stack.v1 + "/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Accel-Buffering"] == "no"
        raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    events = parse_sse(raw)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert finish_reasons(events) == {0: "length"}
    assert events[-2]["usage"]["completion_tokens"] == 20
    assert "\ufffd" not in chat_text(events)


async def test_client_disconnect_cancels_generation_in_the_model(stack: Stack) -> None:
    body = {**CHAT, "stream": True, "max_tokens": 2000, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(stack.v1 + "/chat/completions", json=body)
        first = await resp.content.readuntil(b"\n\n")
        for _ in range(3):
            await resp.content.readuntil(b"\n\n")
        resp.close()  # hang up after a few tokens
    request_id = re.search(rb'"id":"([^"]+)"', first)
    assert request_id is not None
    # the model logs when it stops generating a cancelled request: long before max_tokens
    assert await cancelled_after(stack, f"{request_id.group(1).decode()}-0") < 2000


async def test_stream_error_statuses_and_limits(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        url = stack.v1 + "/chat/completions"
        async with session.post(url, data=b"{oops", headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"
        async with session.post(url, json={**CHAT, "user": "x" * (5 * 1024 * 1024)}) as resp:
            assert resp.status == 413 and (await resp.json())["error"]["code"] == "request_too_large"
        async with session.post(url, json={**CHAT, "stream": True, "n": 0}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["param"] == "n"
        # and the server still serves everyone
        async with session.post(url, json={**CHAT, "max_tokens": 3}) as resp:
            assert resp.status == 200 and (await resp.json())["usage"]["completion_tokens"] == 3


async def test_triton_unreachable_is_503(tmp_path: Path, stack: Stack) -> None:
    dead = free_port()
    proc, port, log = start_gateway(
        tmp_path, "--triton-url", f"127.0.0.1:{dead}", "--tokenizer-dir", str(MODEL_REPOSITORY / "smollm2" / "weights")
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/health", proc, 60, log)
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/ready") as resp:
                assert resp.status == 503
            for stream in (False, True):
                async with session.post(base + "/v1/chat/completions", json={**CHAT, "stream": stream}) as resp:
                    assert resp.status == 503
                    error = (await resp.json())["error"]
                    assert error["code"] == "upstream_unavailable" and error["type"] == "service_unavailable"
    finally:
        assert stop(proc) == 0


def test_model_that_fails_to_load_is_quoted_from_tritons_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPOSITORY / "smollm2", repo / "smollm2", ignore=shutil.ignore_patterns("weights"))
    ports = TritonPorts(free_port(), free_port(), free_port())
    server = TritonServer(repo, tmp_path / "cache", ports)
    server.start()
    try:
        with pytest.raises(TritonLaunchError) as err:
            server.wait_ready(timeout=120)
    finally:
        server.stop()
    assert "no prepared model" in str(err.value)  # the model's own error, from Triton's log
    assert not server.running
