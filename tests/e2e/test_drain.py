"""SIGTERM drains: /ready 503 at once, new requests 503, live streams finish, exit 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import Stack, start_gateway, synthetic_upstream, wait_http
from tests.sse import finish_reasons, parse_sse

pytestmark = pytest.mark.e2e

BODY = {"model": "synthetic", "messages": [{"role": "user", "content": "go"}], "stream": True, "max_tokens": 300}


async def test_sigterm_drains_live_streams(tmp_path: Path, stack: Stack) -> None:
    proc, port, log = start_gateway(tmp_path, *synthetic_upstream(stack))
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/ready", proc, 60, log)
    async with aiohttp.ClientSession() as session:

        async def stream() -> list[object]:
            async with session.post(base + "/v1/chat/completions", json=BODY) as resp:
                assert resp.status == 200
                return parse_sse(await resp.read())

        streams = [asyncio.create_task(stream()) for _ in range(3)]
        await asyncio.sleep(0.5)  # the streams are running (300 tokens take ~1.5 s)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with session.get(base + "/ready") as resp:
            assert resp.status == 503
        async with session.post(base + "/v1/chat/completions", json={**BODY, "stream": False}) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "shutting_down"
        results = await asyncio.gather(*streams)
    for events in results:  # none lost: every stream ran to its end
        assert events[-1] == "[DONE]" and finish_reasons(events) == {0: "length"}
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert ": drained" in log.read_text() and "Traceback" not in log.read_text()
