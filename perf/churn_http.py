"""The churn benchmark's HTTP calls: one request of the mix (read and classified as it arrives),
the gateway's /metrics, and the checks after the load."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from perf.churn_mix import EMBEDDINGS, KINDS, PATHS, RERANK, TRANSCRIPTIONS, Kind
from perf.churn_outcome import (
    Record,
    embeddings_outcome,
    error_code,
    nonstream_outcome,
    rejected_outcome,
    rerank_outcome,
    stream_reader,
    transcript_outcome,
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
    """One request of a chat or Responses kind; ``cut_after`` > 0: close the connection after that
    many SSE events."""
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
                reader = stream_reader(kind)
                events = 0
                async for chunk in resp.content.iter_any():
                    for data in parser.feed(chunk):
                        events += 1
                        outcome = reader.event(data)
                        if outcome:
                            break
                        if not ttft and reader.text:
                            ttft = time.monotonic() - start
                        if cut_after and events >= cut_after:
                            outcome = "disconnect"
                            resp.close()  # drops the connection: the gateway sees the client gone
                            break
                    if outcome:
                        break
                if not outcome:
                    outcome = reader.end()
    except TimeoutError:
        outcome = "hung"
    except (aiohttp.ClientError, OSError) as exc:
        outcome = f"conn:{type(exc).__name__}"
    return Record(name, start - t0, time.monotonic() - t0, outcome, ttft)


def api_outcome(kind: Kind, body: dict[str, Any] | None, status: int, raw: bytes) -> str:
    """The outcome of an embeddings, rerank or transcriptions answer: the status it must get, then the
    body's shape."""
    if status != kind.status:
        return "bad_status:200" if status == 200 else f"http_{status}:{error_code(raw)}"
    if kind.status != 200:
        return rejected_outcome(raw)
    if kind.api == TRANSCRIPTIONS:
        return transcript_outcome(raw)
    assert body is not None
    return embeddings_outcome(body, raw) if kind.api == EMBEDDINGS else rerank_outcome(body, raw)


async def api_request(
    session: aiohttp.ClientSession,
    base: str,
    name: str,
    kind: Kind,
    body: dict[str, Any] | None,
    t0: float,
    speech: bytes | None = None,
    close_after: float = 0.0,
) -> Record:
    """One request of an embeddings, rerank or transcriptions kind: JSON ``body`` (embeddings, rerank)
    or the ``speech`` file (transcriptions); a ``disconnect`` kind closes its connection ``close_after``
    seconds after sending."""
    start = time.monotonic()
    url = base + PATHS[kind.api]
    try:
        if kind.disconnect:
            assert body is not None
            auth = session.headers.get("Authorization")
            sent = send_and_close(url, orjson.dumps(body), auth, close_after)
            outcome = await asyncio.wait_for(sent, session.timeout.total)
        elif kind.api == TRANSCRIPTIONS:
            assert body is not None and speech is not None
            form = aiohttp.FormData()
            form.add_field("model", str(body["model"]))
            form.add_field("response_format", "json")
            form.add_field("file", speech, filename="speech.wav", content_type="audio/wav")
            async with session.post(url, data=form) as resp:
                outcome = api_outcome(kind, None, resp.status, await resp.read())
        else:
            async with session.post(url, data=orjson.dumps(body), headers=JSON_HEADERS) as resp:
                outcome = api_outcome(kind, body, resp.status, await resp.read())
    except TimeoutError:
        outcome = "hung"
    except (aiohttp.ClientError, OSError) as exc:
        outcome = f"conn:{type(exc).__name__}"
    return Record(name, start - t0, time.monotonic() - t0, outcome)


async def send_and_close(url: str, body: bytes, auth: str | None, close_after: float) -> str:
    """POST ``body`` on a connection of its own and close it ``close_after`` seconds after the last byte:
    ``disconnect``, unless an answer other than a 200 came back already (then its ``http_...`` outcome)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + (f"Authorization: {auth}\r\n" if auth else "") + "\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        if close_after > 0:
            await asyncio.sleep(close_after)
        with contextlib.suppress(TimeoutError):  # an early answer: an error, or a far too fast 200
            status_line = await asyncio.wait_for(reader.readline(), 0.001)
            fields = status_line.split()
            if len(fields) >= 2 and fields[1] != b"200":
                return f"http_{fields[1].decode(errors='replace')}:early"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return "disconnect"


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


async def final_checks(
    session: aiohttp.ClientSession, base: str, args: argparse.Namespace, speech: bytes | None = None
) -> dict[str, Any]:
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
    kinds = [KINDS[name] for name in args.weights]
    if any(k.api in (EMBEDDINGS, RERANK) for k in kinds):
        body = {"model": args.embed_model, "input": ["Hello", "Goodbye"]}
        checks[args.embed_model] = await _check(session, base, KINDS["embed"], body, None)
    if any(k.api == TRANSCRIPTIONS for k in kinds) and speech is not None:
        body = {"model": args.transcribe_model}
        checks[args.transcribe_model] = await _check(session, base, KINDS["transcribe"], body, speech)
    return checks


async def _check(
    session: aiohttp.ClientSession, base: str, kind: Kind, body: dict[str, Any], speech: bytes | None
) -> dict[str, Any]:
    """One plain request of ``kind`` after the load, checked as during it."""
    start = time.monotonic()
    record = await api_request(session, base, kind.name, kind, body, start, speech)
    return {"ok": record.outcome.startswith("ok:"), "detail": record.outcome, "ms": round(record.end * 1000, 1)}
