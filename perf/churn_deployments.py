"""The churn benchmark's deployment cycler (``--deployment-cycles``): the operator API under load.

One task beside the workers loops until the run ends. Each cycle:

1. ``POST /admin/v1/deployments``: a deployment of Triton's ``synthetic`` under a fresh name (its model
   id), with a few random settings (``limits.max_in_flight``, an ACL that lets 127.0.0.1 in or none,
   tags); it must answer 201 and reach ``ready`` (with the embedded stack ``synthetic`` is loaded and
   pinned already, so at once);
2. 2-4 concurrent streaming chat requests to it (``max_tokens`` 100), each read to its first text;
3. ``DELETE`` while they stream: 200, status ``deleting``;
4. right after, a new request to that model id: 404;
5. every stream started must still end as the synthetic model ends it: ``finish_reason`` ``length``,
   no error event, not cut;
6. the deployment is gone (``GET`` 404) within :data:`GONE_TIMEOUT`.

A deployment that ends in ``error`` or never gets ready is deleted too, and must be gone as well.
Each cycle adds one record to the run (kind ``deployment_cycle``): ``ok:cycle``, or
``deployment:<failure>+...``, an unexpected outcome that fails the gate (``--allow deployment:...``
tolerates one). The failures, counted per cycle, except the stream ones, counted per stream:

- ``create_failed``: the POST did not answer 201, or the deployment went to ``error``;
- ``not_ready``: not ``ready`` within :data:`READY_TIMEOUT`;
- ``stream_refused``: a stream got no 200 (while the deployment was ready);
- ``stream_not_started``: a stream sent no text within :data:`START_TIMEOUT`;
- ``delete_failed``: the DELETE did not answer 200 with status ``deleting``;
- ``not_404_after_delete``: the request sent right after the DELETE got something else than a 404;
- ``stream_cut`` (ended without ``[DONE]``, a choice without its finish_reason, the connection broke),
  ``stream_error`` (an error event), ``stream_bad_finish`` (a finish_reason other than ``length``),
  ``stream_hung`` (no end within the request timeout);
- ``not_gone``: ``GET`` still found it :data:`GONE_TIMEOUT` seconds after the DELETE.

At the end, ``left_over`` counts the deployments of this run still listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from perf.churn_http import JSON_HEADERS
from perf.churn_mix import CHAT, PATHS, SYNTHETIC, Kind, request_body
from perf.churn_outcome import Record, error_code, stream_reader
from perf.metrics import distribution
from perf.sse import SSEParser

TRITON_MODEL = "synthetic"
ADMIN = "/admin/v1/deployments"
KIND = "deployment_cycle"  # the kind of the records a cycle adds to the run
STREAM = Kind("deployment_stream", SYNTHETIC, True, 100, expect=("length",))
READY_TIMEOUT = 60.0  # creating -> ready (the embedded stack: at once)
START_TIMEOUT = 30.0  # a stream's first text
GONE_TIMEOUT = 90.0  # DELETE -> GET 404: its streams end (0.5 s of tokens) or the drain timeout (30 s), the unload
POLL = 0.1  # seconds between GETs while waiting for ready or gone
PAUSE_AFTER_FAILURE = 1.0
CHECKS = (
    "create_failed",
    "not_ready",
    "stream_refused",
    "stream_not_started",
    "delete_failed",
    "not_404_after_delete",
    "stream_cut",
    "stream_error",
    "stream_bad_finish",
    "stream_hung",
    "not_gone",
)
ACLS: tuple[list[dict[str, str]], ...] = (
    [],
    [{"ip": "127.0.0.1", "description": "churn: this client"}],
    [{"ip": "10.0.0.0/8", "description": "churn: elsewhere"}, {"ip": "127.0.0.0/8", "description": "churn: loopback"}],
)


def deployment_body(name: str, streams: int, rng: random.Random) -> dict[str, Any]:
    """The create body of one cycle's deployment: ``synthetic`` under ``name``, with a random
    ``max_in_flight`` that still lets its ``streams`` run at once (its queue is 0: more would get 503),
    an ACL letting 127.0.0.1 in, or none, and tags."""
    body: dict[str, Any] = {"name": name, "model": TRITON_MODEL, "tags": ["churn", rng.choice(("a", "b", "c"))]}
    max_in_flight = rng.choice((None, streams, streams + 2, 64))
    if max_in_flight is not None:
        body["limits"] = {"max_in_flight": max_in_flight}
    acls = rng.choice(ACLS)
    if acls:
        body["acls"] = acls
    return body


def stream_failure(outcome: str) -> str | None:
    """The check a cycle's stream failed, from its churn outcome (``None``: it ended as it must)."""
    if outcome == "ok:length":
        return None
    if outcome == "hung":
        return "stream_hung"
    if outcome.startswith("sse_error:"):
        return "stream_error"
    if outcome.startswith("http_"):
        return "stream_refused"
    if outcome.startswith(("bad_finish:", "ok:")):
        return "stream_bad_finish"
    return "stream_cut"  # truncated, incomplete, conn:<exception>


def cycle_outcome(failures: Sequence[str]) -> str:
    """A cycle's outcome in the run's records: ``ok:cycle``, or ``deployment:`` and its failures."""
    if not failures:
        return "ok:cycle"
    return "deployment:" + "+".join(sorted(set(failures)))


@dataclass(slots=True)
class Cycle:
    n: int
    name: str
    start: float  # seconds since the run began
    end: float = 0.0
    failures: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    streams: int = 0
    streams_ok: int = 0
    live_at_delete: int = 0  # streams still running when the DELETE answered
    ready_s: float | None = None  # POST -> ready
    gone_s: float | None = None  # DELETE answered -> GET 404

    def fail(self, check: str, detail: str) -> None:
        self.failures.append(check)
        self.details.append(f"{check}: {detail}")


def summarize_cycles(cycles: Sequence[Cycle], left_over: int | None, examples: int = 20) -> dict[str, Any]:
    """The cycler's figures: ``counts`` (cycles, cycle_ok and each check's failures), streams, times (ms)
    and the first failed cycles in full."""
    counts: Counter[str] = Counter()
    for c in cycles:
        counts.update(c.failures)
    failed = [c for c in cycles if c.failures]
    return {
        "counts": {
            "cycles": len(cycles),
            "cycle_ok": len(cycles) - len(failed),
            **{check: counts[check] for check in CHECKS if counts[check]},
        },
        "streams": sum(c.streams for c in cycles),
        "streams_ok": sum(c.streams_ok for c in cycles),
        "live_at_delete": sum(c.live_at_delete for c in cycles),
        "left_over": left_over,
        "ready_ms": distribution([c.ready_s for c in cycles if c.ready_s is not None]),
        "gone_ms": distribution([c.gone_s for c in cycles if c.gone_s is not None]),
        "cycle_ms": distribution([c.end - c.start for c in cycles]),
        "failed_cycles": [
            {"n": c.n, "name": c.name, "t": round(c.start, 2), "failures": c.failures, "details": c.details}
            for c in failed[:examples]
        ],
    }


class _Stream:
    """One streaming request to a cycle's deployment: started once it sent text."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.outcome = ""
        self.ended = 0.0  # monotonic time of its end

    async def run(self, session: aiohttp.ClientSession, url: str, body: bytes) -> None:
        reader = stream_reader(STREAM)
        try:
            async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
                if resp.status != 200:
                    self.outcome = f"http_{resp.status}:{error_code(await resp.read())}"
                else:
                    parser = SSEParser()
                    async for chunk in resp.content.iter_any():
                        for data in parser.feed(chunk):
                            self.outcome = reader.event(data)
                            if reader.text:
                                self.started.set()
                            if self.outcome:
                                break
                        if self.outcome:
                            break
                    self.outcome = self.outcome or reader.end()
        except TimeoutError:
            self.outcome = "hung"
        except (aiohttp.ClientError, OSError) as exc:
            self.outcome = f"conn:{type(exc).__name__}"
        finally:
            self.ended = time.monotonic()
            self.started.set()  # whatever happened, no one waits for it any more


class DeploymentCycler:
    """Creates, uses and deletes deployments back to back until ``deadline()`` (monotonic s); every
    cycle becomes a record handed to ``note``."""

    def __init__(
        self,
        base: str,
        t0: float,
        note: Callable[[Record], object],
        seed: int = 0,
        request_timeout: float = 120.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base = base
        self.t0 = t0
        self.note = note
        self.rng = random.Random(f"{seed}:deployments")
        self.tag = f"churn-dep-{secrets.token_hex(3)}"  # this run's names: churn-dep-<tag>-<n>
        self.request_timeout = request_timeout
        self.headers = headers
        self.cycles: list[Cycle] = []
        self.left_over: int | None = None

    def summary(self) -> dict[str, Any]:
        return summarize_cycles(self.cycles, self.left_over)

    async def run(self, deadline: Callable[[], float]) -> None:
        # a connection pool of its own: the workers' pool is always full, and the request right after
        # the DELETE must not wait for a free connection
        connector = aiohttp.TCPConnector(limit=8)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers) as session:
            n = 0
            while time.monotonic() < deadline():
                n += 1
                cycle = await self.cycle(session, n)
                self.cycles.append(cycle)
                self.note(Record(KIND, cycle.start, cycle.end, cycle_outcome(cycle.failures)))
                if cycle.failures:
                    await asyncio.sleep(PAUSE_AFTER_FAILURE)
            self.left_over = await self.count_left(session)

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any, str]:
        """An operator API call: (status, JSON body or None, a short description); status 0: no answer."""
        try:
            data = orjson.dumps(body) if body is not None else None
            async with session.request(method, self.base + path, data=data, headers=JSON_HEADERS) as resp:
                raw = await resp.read()
        except TimeoutError:
            return 0, None, f"{method} {path}: no answer in {self.request_timeout:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return 0, None, f"{method} {path}: {type(exc).__name__}"
        with contextlib.suppress(orjson.JSONDecodeError):
            payload = orjson.loads(raw)
            shown = payload.get("status") if resp.status < 300 and isinstance(payload, dict) else error_code(raw)
            return resp.status, payload, f"{method} {path}: HTTP {resp.status} {shown}"
        return resp.status, None, f"{method} {path}: HTTP {resp.status} {raw[:200]!r}"

    async def cycle(self, session: aiohttp.ClientSession, n: int) -> Cycle:
        name = f"{self.tag}-{n}"
        start = time.monotonic()
        cycle = Cycle(n, name, start - self.t0)
        streams = self.rng.randint(2, 4)
        status, created, detail = await self.call(session, "POST", ADMIN, deployment_body(name, streams, self.rng))
        if status != 201 or not isinstance(created, dict) or "id" not in created:
            cycle.fail("create_failed", detail)
            cycle.end = time.monotonic() - self.t0
            return cycle
        path = f"{ADMIN}/{created['id']}"
        state, detail = await self.wait_ready(session, path)
        if state == "ready":
            cycle.ready_s = time.monotonic() - start
            await self.use_and_delete(session, cycle, path, created.get("model_id") or name, streams)
        else:
            cycle.fail("create_failed" if state == "error" else "not_ready", detail)
            status, _, detail = await self.call(session, "DELETE", path)
            if status == 200:
                await self.wait_gone(session, cycle, path, time.monotonic())
            elif status != 404:
                cycle.fail("delete_failed", detail)
        cycle.end = time.monotonic() - self.t0
        return cycle

    async def wait_ready(self, session: aiohttp.ClientSession, path: str) -> tuple[str, str]:
        """Until the deployment is ``ready`` or ``error``: (that status, the last answer); ``""`` past
        :data:`READY_TIMEOUT`."""
        deadline = time.monotonic() + READY_TIMEOUT
        detail = ""
        while time.monotonic() < deadline:
            status, payload, detail = await self.call(session, "GET", path)
            state = payload.get("status") if status == 200 and isinstance(payload, dict) else None
            if state == "ready":
                return "ready", detail
            if state == "error":
                return "error", f"{detail}: {payload.get('error_message')}"
            await asyncio.sleep(POLL)
        return "", f"still not ready after {READY_TIMEOUT:g}s ({detail})"

    async def use_and_delete(
        self, session: aiohttp.ClientSession, cycle: Cycle, path: str, model_id: str, count: int
    ) -> None:
        url = self.base + PATHS[CHAT]
        body = orjson.dumps(request_body(STREAM, model_id, 0))
        streams = [_Stream() for _ in range(count)]
        tasks = [asyncio.create_task(s.run(session, url, body)) for s in streams]
        cycle.streams = count
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(s.started.wait() for s in streams)), START_TIMEOUT)
            not_started = [s for s in streams if not s.started.is_set()]
            for _ in not_started:
                cycle.fail("stream_not_started", f"no text within {START_TIMEOUT:g}s")
            status, deleted, detail = await self.call(session, "DELETE", path)
            deleted_at = time.monotonic()
            cycle.live_at_delete = sum(not t.done() for t in tasks)
            if status != 200 or not isinstance(deleted, dict) or deleted.get("status") != "deleting":
                cycle.fail("delete_failed", detail)
            probe = request_body(STREAM, model_id, 0) | {"stream": False, "max_tokens": 1}
            probe.pop("stream_options", None)
            status, _, detail = await self.call(session, "POST", PATHS[CHAT], probe)
            if status != 404:
                cycle.fail("not_404_after_delete", f"{model_id}: {detail}")
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # only when this cycle itself is cancelled
                task.cancel()
        for s in streams:
            failure = stream_failure(s.outcome)
            if failure is None:
                cycle.streams_ok += 1
            else:
                cycle.fail(failure, s.outcome)
        await self.wait_gone(session, cycle, path, deleted_at)

    async def wait_gone(self, session: aiohttp.ClientSession, cycle: Cycle, path: str, since: float) -> None:
        """Until ``GET`` answers 404; ``not_gone`` past :data:`GONE_TIMEOUT` after ``since``."""
        detail = ""
        while time.monotonic() < since + GONE_TIMEOUT:
            status, _, detail = await self.call(session, "GET", path)
            if status == 404:
                cycle.gone_s = time.monotonic() - since
                return
            await asyncio.sleep(POLL)
        cycle.fail("not_gone", f"still there {GONE_TIMEOUT:g}s after the DELETE ({detail})")

    async def count_left(self, session: aiohttp.ClientSession) -> int | None:
        """The deployments of this run still listed (``None``: the list failed)."""
        status, payload, _ = await self.call(session, "GET", f"{ADMIN}?name={self.tag}&per_page=100")
        if status != 200 or not isinstance(payload, dict):
            return None
        return int(payload.get("total_count", 0))
