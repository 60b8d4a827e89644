"""--workers 2 on one usage ledger: the openai SDK's concurrent chat requests, spread over both workers,
are summed by GET /v1/usage (whichever worker answers) exactly as their responses' usage, and the
file holds the same after SIGTERM."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from gateway.auth.keys import new_key
from gateway.usage.query import UsageQuery, aggregate
from tests.e2e.conftest import Stack, reaped, start_gateway, synthetic_upstream, wait_http

pytestmark = pytest.mark.e2e

REQUESTS = 40
ROUNDS = 10


async def one_chat(sdk: openai.AsyncOpenAI, i: int) -> tuple[int, int]:
    messages = [{"role": "user", "content": f"Request {i}: " + "word " * random.randint(1, 30)}]
    max_tokens = random.randint(1, 16)
    if i % 2:
        stream = await sdk.chat.completions.create(
            model="synthetic",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [chunk.usage async for chunk in stream if chunk.usage is not None][-1]
    else:
        resp = await sdk.chat.completions.create(model="synthetic", messages=messages, max_tokens=max_tokens)  # type: ignore[arg-type]
        assert resp.usage is not None
        usage = resp.usage
    return usage.prompt_tokens, usage.completion_tokens


async def test_two_workers_record_every_request(tmp_path: Path, stack: Stack) -> None:
    key, record = new_key("team", "w")
    admin, admin_record = new_key("ops", "admin")
    db = tmp_path / "usage.sqlite"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'usage_db = "{db}"\n\n[[projects]]\nid = "team"\n\n[[projects]]\nid = "ops"\n\n'
        f'[[keys]]\nid = "{record.id}"\nsha256 = "{record.sha256}"\nproject = "team"\n\n'
        f'[[keys]]\nid = "{admin_record.id}"\nsha256 = "{admin_record.sha256}"\nproject = "ops"\nadmin = true\n'
    )
    proc, port, log = start_gateway(tmp_path, "--workers", "2", "--config", str(config), *synthetic_upstream(stack))
    with reaped(proc):
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ready", proc, 90, log)
        reported: list[tuple[int, int]] = []
        pids: set[str] = set()
        # the kernel spreads connections over the workers (SO_REUSEPORT) by a hash: rounds on fresh
        # connections until both have answered, bounded by count, not by time
        for _ in range(ROUNDS):
            sdk = openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
            reported += await asyncio.gather(*(one_chat(sdk, len(reported) + i) for i in range(REQUESTS)))
            await sdk.close()
            pids = set(re.findall(r"\[(\d+)\]: .*/v1/chat/completions", log.read_text()))
            if len(pids) == 2:
                break
        assert len(pids) == 2, f"{len(reported)} requests on fresh connections all reached one worker"
        expected = (len(reported), sum(r[0] for r in reported), sum(r[1] for r in reported))

        async def read() -> tuple[int, int, int]:
            async with (
                aiohttp.ClientSession() as session,  # a new connection: either worker answers
                session.get(
                    base + "/v1/usage", params={"model": "synthetic"}, headers={"Authorization": f"Bearer {admin}"}
                ) as resp,
            ):
                assert resp.status == 200
                totals = (await resp.json())["totals"]
            return totals["num_requests"], totals["input_tokens"], totals["output_tokens"]

        # the other worker's records arrive within its flush interval (0.5 s); the bound only catches a hang
        deadline = time.monotonic() + 120
        while (seen := await read()) != expected:
            assert time.monotonic() < deadline, f"/v1/usage says {seen}, the responses {expected}"
            await asyncio.sleep(0.2)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        rows = aggregate(db, UsageQuery(models=("synthetic",)))
        recorded = tuple(sum(getattr(r, f) for r in rows) for f in ("requests", "input_tokens", "output_tokens"))
        assert recorded == expected
        assert {r.project for r in rows} == {"team"}
        assert "Traceback" not in log.read_text()
