"""Admission on a real gateway process: a saturated upstream is refused with 503 and Retry-After."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import WEIGHTS
from tests.e2e.conftest import Stack, start_gateway, stop, wait_http

pytestmark = pytest.mark.e2e


async def test_overload_is_refused_not_queued(tmp_path: Path, stack: Stack) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[models]]\nid = "synthetic"\ntriton_url = "127.0.0.1:{stack.triton_grpc_port}"\n'
        f'triton_model = "synthetic"\ntokenizer_dir = "{WEIGHTS}"\nmax_in_flight = 2\nmax_queue = 1\n'
        "queue_timeout = 30\n"
    )
    proc, port, log = start_gateway(tmp_path, "--config", str(config))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ready", proc, 60, log)
        long = {"model": "synthetic", "messages": [{"role": "user", "content": "x"}], "max_tokens": 400}
        async with aiohttp.ClientSession() as session:

            async def call(body: dict[str, object]) -> int:
                async with session.post(base + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
                    return resp.status

            running = [asyncio.create_task(call(long)) for _ in range(3)]  # 2 in flight, 1 queued
            await asyncio.sleep(0.5)
            async with session.post(base + "/v1/chat/completions", json={**long, "max_tokens": 1}) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"]["code"] == "server_overloaded"
            assert await asyncio.gather(*running) == [200, 200, 200]  # the queued one ran after a slot freed
            async with session.get(base + "/metrics") as resp:
                # the three admitted requests each observed their wait; the refused one never queued
                assert 'gateway_queue_wait_seconds_count{model="synthetic"} 3.0' in await resp.text()
    finally:
        assert stop(proc) == 0
