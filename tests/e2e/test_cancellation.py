"""Who ends a request in the model: the model itself, unless the gateway must stop it.

Cancelling a Triton call while the model still sends on it crashes or deadlocks the embedded
tritonserver (Triton's cancellation race), so the gateway reads every call to its end and stops only
a model that would go on (the client went away, or a stop string matched where the model itself does
not stop), in-band, with TensorRT-LLM's ``stop`` request. The CPU model logs "cancelled after N
tokens (stop request)" or "(call cancelled)" whenever it sees either, even after its last token, so
its log tells which requests were stopped and how. tests/integration/test_call_endings.py checks the
same against a stand-in that records every half-close, cancel and stop request.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from tests.e2e.conftest import MODEL, Stack, cancelled_after
from tests.sse import chat_text, finish_reasons, parse_sse

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "Write two sentences about the sea."}]


async def chat(session: aiohttp.ClientSession, stack: Stack, **body: object) -> tuple[str, list[str], list[str]]:
    """(response id, texts, finish reasons), streamed or not."""
    payload = {"model": MODEL, "messages": PROMPT, "temperature": 0, **body}
    async with session.post(stack.v1 + "/chat/completions", json=payload) as resp:
        assert resp.status == 200, await resp.text()
        if body.get("stream"):
            events = parse_sse(await resp.read())
            n = len(finish_reasons(events))
            texts = [chat_text(events, i) for i in range(n)]
            return str(events[0]["id"]), texts, [finish_reasons(events)[i] for i in range(n)]
        data = await resp.json()
    choices = data["choices"]
    return data["id"], [c["message"]["content"] for c in choices], [c["finish_reason"] for c in choices]


async def disconnect_after_tokens(stack: Stack) -> str:
    """A stream the client hangs up on: the model must be cancelled. Its Triton request id."""
    body = {"model": MODEL, "messages": PROMPT, "stream": True, "max_tokens": 500, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(stack.v1 + "/chat/completions", json=body)
        first = await resp.content.readuntil(b"\n\n")
        await resp.content.readuntil(b"\n\n")
        resp.close()
    found = re.search(rb'"id":"([^"]+)"', first)
    assert found is not None
    return f"{found.group(1).decode()}-0"


async def test_requests_that_end_by_themselves_are_never_cancelled(stack: Stack) -> None:
    finished: list[str] = []
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            for max_tokens in (1, 3):
                rid, _, reasons = await chat(session, stack, stream=stream, max_tokens=max_tokens, n=2)
                assert reasons == ["length", "length"]
                finished += [f"{rid}-0", f"{rid}-1"]
        # a stop string the model stops on itself: a word of the greedy text, which it writes as tokens
        _, texts, _ = await chat(session, stack, max_tokens=12)
        word = next(w for w in texts[0].split()[2:] if w.isalpha() and len(w) > 3)
        rid, stopped, reasons = await chat(session, stack, max_tokens=12, stop=[word])
        assert reasons == ["stop"] and word not in stopped[0] and texts[0].startswith(stopped[0])
        finished.append(f"{rid}-0")
    # a request that is cancelled, after all of those: once its line is in the model's log,
    # a cancellation of any earlier request would be there too
    sentinel = await disconnect_after_tokens(stack)
    assert await cancelled_after(stack, sentinel) < 500
    log = stack.triton_log.read_text(errors="replace")
    assert re.search(rf"request '{re.escape(sentinel)}' cancelled after \d+ tokens \(stop request\)", log)
    cancelled = [rid for rid in finished if f"request '{rid}' cancelled" in log]
    assert cancelled == [], f"requests that ended by themselves were cancelled: {cancelled}"


async def test_a_stop_string_inside_a_token_stops_the_model_in_band(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        _, texts, _ = await chat(session, stack, max_tokens=16)
        word = next(w for w in texts[0].split()[2:] if w.isalpha() and len(w) > 4)
        inner = word[1:4]  # no token of the model's text ends with these letters: only the gateway sees them
        rid, stopped, reasons = await chat(session, stack, max_tokens=200, ignore_eos=True, stop=[inner])
    assert reasons == ["stop"] and inner not in stopped[0]
    assert await cancelled_after(stack, f"{rid}-0") < 200
    assert f"request '{rid}-0' cancelled after" in (line := _line(stack, f"{rid}-0")) and "(stop request)" in line


def _line(stack: Stack, triton_request_id: str) -> str:
    log = stack.triton_log.read_text(errors="replace").splitlines()
    return next(line for line in log if f"request '{triton_request_id}' cancelled" in line)


async def test_many_one_token_streams_leave_triton_serving(stack: Stack) -> None:
    """The load that crashed the embedded Triton: streams ending at their first token, 8 at a time."""
    body = {"model": "synthetic", "messages": PROMPT, "max_tokens": 1, "stream": True}
    outcomes: list[int] = []
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(8)

        async def one() -> None:
            async with sem, session.post(stack.v1 + "/chat/completions", json=body) as resp:
                raw = await resp.read()
                outcomes.append(resp.status if b'"error"' not in raw else 599)

        await asyncio.gather(*(one() for _ in range(400)))
    assert outcomes == [200] * 400
    assert "Signal (11)" not in stack.triton_log.read_text(errors="replace")
