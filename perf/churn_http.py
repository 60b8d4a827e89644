"""The churn benchmark's HTTP calls: one request of the mix (read and classified as it arrives),
the gateway's /metrics, and the checks after the load."""

from __future__ import annotations

import argparse
import time
from typing import Any

import aiohttp
import orjson

from perf.churn_mix import Kind
from perf.churn_outcome import (
    Record,
    error_code,
    finish_outcome,
    finish_reason_of,
    has_content,
    nonstream_outcome,
)
from perf.sse import SSEParser

JSON_HEADERS = {"Content-Type": "application/json"}
METRICS = (
    "gateway_triton_restarts_total",
    "gateway_requests_in_flight",
    "gateway_upstream_requests_in_flight",
    "gateway_client_disconnects_total",
    "gateway_upstream_errors_total",
)
COUNTERS = ("gateway_client_disconnects_total", "gateway_upstream_errors_total")  # reported as increases


async def one_request(
    session: aiohttp.ClientSession, url: str, name: str, kind: Kind, body: bytes, cut_after: int, t0: float
) -> Record:
    """One request; ``cut_after`` > 0: close the connection after that many SSE events."""
    start = time.monotonic()
    ttft = 0.0
    outcome = ""
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
            if resp.status != 200:
                outcome = f"http_{resp.status}:{error_code(await resp.read())}"
            elif not kind.stream:
                outcome = nonstream_outcome(kind, await resp.read())
            else:
                parser = SSEParser()
                events = 0
                reasons: list[str] = []
                done = False
                async for chunk in resp.content.iter_any():
                    for data in parser.feed(chunk):
                        events += 1
                        if data == b"[DONE]":
                            done = True
                            break
                        if data.startswith(b'{"error"'):
                            outcome = "sse_error:" + error_code(data)
                            break
                        if not ttft and has_content(data):
                            ttft = time.monotonic() - start
                        reason = finish_reason_of(data)
                        if reason is not None:
                            reasons.append(reason)
                        if cut_after and events >= cut_after:
                            outcome = "disconnect"
                            resp.close()  # drops the connection: the gateway sees the client gone
                            break
                    if done or outcome:
                        break
                if not outcome:
                    outcome = finish_outcome(kind, reasons) if done else "truncated"
    except TimeoutError:
        outcome = "hung"
    except (aiohttp.ClientError, OSError) as exc:
        outcome = f"conn:{type(exc).__name__}"
    return Record(name, start - t0, time.monotonic() - t0, outcome, ttft)


def parse_metric(text: str, name: str) -> float | None:
    """The sum of every sample of metric ``name`` in Prometheus text (``None`` when absent)."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest[:1] not in ("{", " "):
            continue  # another metric whose name starts alike
        try:
            total += float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        found = True
    return total if found else None


async def read_metrics(session: aiohttp.ClientSession, base: str) -> dict[str, float | None]:
    try:
        async with session.get(base + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            text = await resp.text() if resp.status == 200 else ""
    except (TimeoutError, aiohttp.ClientError, OSError):
        text = ""
    return {name: parse_metric(text, name) for name in METRICS}


async def final_checks(session: aiohttp.ClientSession, base: str, args: argparse.Namespace) -> dict[str, Any]:
    """/health, /ready, and one plain request per model, after the load."""
    checks: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=60)
    for path in ("/health", "/ready"):
        try:
            async with session.get(base + path, timeout=timeout) as resp:
                checks[path] = {"ok": resp.status == 200, "detail": f"HTTP {resp.status}"}
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            checks[path] = {"ok": False, "detail": type(exc).__name__}
    for model in (args.synthetic_model, args.real_model):
        body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}
        start = time.monotonic()
        try:
            async with session.post(base + "/v1/chat/completions", json=body, timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status == 200:
                    payload = orjson.loads(raw)
                    reason = payload["choices"][0]["finish_reason"]
                    checks[model] = {"ok": reason in ("length", "stop"), "detail": f"200, finish_reason {reason}"}
                else:
                    checks[model] = {"ok": False, "detail": f"HTTP {resp.status} {error_code(raw)}"}
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError, KeyError, IndexError) as exc:
            checks[model] = {"ok": False, "detail": type(exc).__name__}
        checks[model]["ms"] = round((time.monotonic() - start) * 1000, 1)
    return checks
