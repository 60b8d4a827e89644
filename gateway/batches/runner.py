"""The batch runner: one background task per gateway process that claims batches and runs them.

A claimed batch is held under a lease (:mod:`gateway.batches.lease`) renewed while it runs, so
exactly one process works on it. Its life: ``validating`` (the input checked, every line located)
→ ``in_progress`` (lines run ``concurrency`` at a time, each recorded as it finishes) →
``finalizing`` (the output and error files assembled in input order) → ``completed``; or
``failed`` (no line can run), ``expired`` (the completion window passed), ``cancelling`` →
``cancelled``. Each line's result is recorded once, with its place in the results log, so a
process that stops resumes where it was: SIGTERM lets the lines in flight finish first; a line cut
short (SIGINT, a crash) is run again.

Lines take upstream slots in the batch class (behind interactive requests) and skip the rate
limiter; a line whose upstream is unavailable waits and retries instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.keys import KeyStore, Principal
from gateway.batches.assemble import assemble
from gateway.batches.execute import Outcome, execute
from gateway.batches.lease import Lease
from gateway.batches.lines import line_error
from gateway.batches.records import BatchRecord, LineSpan, NewLine
from gateway.batches.results import error_line, result_line
from gateway.batches.state import Batches
from gateway.batches.validate import Scan, scan
from gateway.core.ids import random_hex
from gateway.core.lifecycle import LIFECYCLE
from gateway.core.models import ModelRegistry
from gateway.errors import GatewayError, InternalError, Unauthorized, UpstreamUnavailable

log = logging.getLogger(__name__)

# told each line that ran: its principal, batch, request id, status, model and (input, output) tokens
UsageHook = Callable[[Principal, BatchRecord, str, int, str, tuple[int, int]], Awaitable[None]]
_RETRY_FIRST, _RETRY_MAX = 0.5, 10.0  # seconds between tries of a line whose upstream is unavailable


@dataclass(slots=True)
class _Watch:
    """What the lease keeper learns while a batch runs."""

    lost: bool = False  # the lease lapsed and may be held by another process
    cancelled: bool = False


class Runner:
    def __init__(
        self,
        batches: Batches,
        lease: Lease,
        keys: KeyStore,
        registry: ModelRegistry,
        concurrency: int,
        max_body_bytes: int,
        poll: float = 1.0,
        on_usage: UsageHook | None = None,
    ) -> None:
        self._batches = batches
        self._catalog = batches.catalog
        self._lease = lease
        self._keys = keys
        self._registry = registry
        self._concurrency = concurrency
        self._max_body_bytes = max_body_bytes
        self._poll = poll
        self._on_usage = on_usage
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, finish: bool, within: float) -> None:
        """Stop claiming lines; with ``finish``, the lines in flight may end (up to ``within`` seconds)
        and are recorded; the rest are halted in-band and will run again."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        if finish:
            await asyncio.wait({task}, timeout=within)
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                batch_id = await self._claim()
            except Exception:  # the catalog or Redis failed: look again later
                log.exception("batch runner: looking for work failed; it will look again")
                batch_id = None
            if batch_id is None:
                await self._idle()
                continue
            try:
                await self._hold(batch_id)
            except Exception:
                log.exception("batch %s: the runner failed; it will try again", batch_id)
                await self._idle()
            finally:
                with contextlib.suppress(Exception):
                    await self._lease.release(batch_id)

    async def _idle(self) -> None:
        # asyncio.timeout, not wait_for: no new task per wait (the runner stays one task)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll):
                await self._wake.wait()
        self._wake.clear()

    async def _claim(self) -> str | None:
        if LIFECYCLE.draining or not await self._catalog.exists():
            return None
        for batch_id in await self._catalog.candidates(time.time()):
            if await self._lease.acquire(batch_id):
                return batch_id
        return None

    async def _hold(self, batch_id: str) -> None:
        watch = _Watch()
        keeper = asyncio.create_task(self._keep(batch_id, watch))
        try:
            await self._work(batch_id, watch)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _keep(self, batch_id: str, watch: _Watch) -> None:
        """Renew the lease (every third of its ttl) and notice a cancellation (every poll)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(min(self._poll, self._lease.ttl / 3))
            if time.monotonic() - renewed >= self._lease.ttl / 3:
                try:
                    held = await self._lease.renew(batch_id)
                except Exception as exc:  # tried again next time, until the lease may have lapsed
                    log.warning("batch %s: renewing the lease failed: %r", batch_id, exc)
                    held = time.monotonic() - renewed < self._lease.ttl * 2 / 3
                else:
                    renewed = time.monotonic() if held else renewed
                if not held:
                    log.warning("batch %s: lease lost; leaving it to its new holder", batch_id)
                    watch.lost = True
                    return
            try:
                status = await self._catalog.status(batch_id)
            except Exception as exc:  # a shared catalog's hiccup: looked at again next time
                log.warning("batch %s: reading its status failed: %r", batch_id, exc)
                continue
            if status == "cancelling":
                watch.cancelled = True

    async def _work(self, batch_id: str, watch: _Watch) -> None:
        batch = await self._catalog.batch(batch_id)
        if batch is not None and batch.status == "validating":
            await self._validate(batch)
            batch = await self._catalog.batch(batch_id)
        if batch is not None and batch.status == "in_progress" and time.time() < batch.expires_at:
            finished = await self._run_lines(batch, watch)  # False: stopped, lease lost, cancelled or expired
            if finished:
                await self._catalog.transition(batch.id, ("in_progress",), "finalizing", int(time.time()))
        batch = await self._catalog.batch(batch_id)
        if batch is None or watch.lost:
            return
        if batch.status == "finalizing":
            await self._finish(batch, "completed", ("finalizing",))
        elif batch.status == "cancelling":
            await self._finish(batch, "cancelled", ("cancelling",))
        elif batch.status == "in_progress" and time.time() >= batch.expires_at:
            await self._finish(batch, "expired", ("in_progress",))

    async def _validate(self, batch: BatchRecord) -> None:
        now = int(time.time())
        blobs, catalog = self._batches.blobs, self._catalog
        found: Scan | None = None
        errors: list[dict[str, Any]] | None
        if await catalog.file(batch.input_file_id, batch.project) is not None:
            with contextlib.suppress(FileNotFoundError):
                found = await scan(blobs.chunks(batch.input_file_id), batch.endpoint, self._max_body_bytes)
        if found is None:
            message = f"The input file {batch.input_file_id} no longer exists"
            errors = [{"code": "file_not_found", "message": message, "param": "input_file_id", "line": None}]
        else:
            errors = found.failure
        if errors is not None:
            data = orjson.dumps(errors).decode()
            await catalog.transition(batch.id, ("validating",), "failed", now, errors=data)
            log.info("batch %s failed validation: %s", batch.id, errors[0]["message"])
            return
        assert found is not None
        invalid = [(i, line) for i, line in enumerate(found.checked) if line.error is not None]
        written = await self._batches.results.append_many(
            batch.id, [error_line(line.custom_id, None, line.error) for _, line in invalid if line.error]
        )
        results: dict[int, tuple[int, int]] = {i: span for (i, _), span in zip(invalid, written, strict=True)}
        lines = [NewLine(span, results.get(i)) for i, span in enumerate(found.spans)]
        if await catalog.start_lines(batch.id, lines, found.model, now):
            log.info("batch %s: %d requests (%d invalid)", batch.id, len(lines), len(invalid))

    def _stops(self, batch: BatchRecord, watch: _Watch) -> bool:
        return self._stopping or LIFECYCLE.draining or watch.lost or watch.cancelled or time.time() >= batch.expires_at

    async def _run_lines(self, batch: BatchRecord, watch: _Watch) -> bool:
        """Run the batch's pending lines; True when none is left."""
        pending = await self._catalog.pending_lines(batch.id)
        principal = self._keys.principal(batch.key_id)
        lines = iter(pending)
        left = len(pending)

        async def worker() -> None:
            nonlocal left
            for span in lines:  # shared: each line is taken by one worker
                if self._stops(batch, watch):
                    return
                if await self._run_line(batch, span, principal, watch):
                    left -= 1

        workers = [asyncio.create_task(worker()) for _ in range(min(self._concurrency, len(pending)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return left == 0

    async def _run_line(self, batch: BatchRecord, span: LineSpan, principal: Principal | None, watch: _Watch) -> bool:
        """Run one line and record its result; False when it was not recorded (it will run again)."""
        request_id = f"req_{random_hex(12)}"
        outcome: Outcome | None = None
        model = ""
        try:
            raw = await self._batches.blobs.read(batch.input_file_id, span.offset, span.length)
            body = orjson.loads(raw)["body"]
            model = str(body.get("model", ""))
            if principal is None:
                raise Unauthorized("The API key that created this batch no longer exists")
            outcome = await self._execute(batch, span, body, principal, request_id, watch)
            if outcome is None:
                return False
            data, status, model = result_line(span.custom_id, request_id, outcome.body), 200, outcome.model
        except GatewayError as exc:
            data, status = error_line(span.custom_id, request_id, line_error(exc)), exc.kind.http_status
        except Exception as exc:  # a line never fails its batch, whatever it hits
            log.exception("batch %s line %d failed", batch.id, span.idx)
            error = InternalError(f"The request failed: {type(exc).__name__}")
            data, status = error_line(span.custom_id, request_id, line_error(error)), error.kind.http_status
        if watch.lost:
            return False
        spot = await self._batches.results.append(batch.id, data)
        tokens = (outcome.prompt_tokens, outcome.completion_tokens) if outcome is not None else (0, 0)
        fence = self._lease.fence
        if not await self._catalog.record_line(batch.id, span.idx, outcome is not None, spot, tokens, fence):
            return False
        if principal is not None and self._on_usage is not None:
            try:
                await self._on_usage(principal, batch, request_id, status, model, tokens)
            except Exception:
                log.exception("batch %s: recording the usage of a line failed", batch.id)
        return True

    async def _execute(
        self,
        batch: BatchRecord,
        span: LineSpan,
        body: dict[str, Any],
        principal: Principal,
        request_id: str,
        watch: _Watch,
    ) -> Outcome | None:
        """The line's outcome; None when the runner stopped while its upstream was unavailable."""
        pause = _RETRY_FIRST

        def dispatched(upstream_id: str) -> None:
            line = {"batch": batch.id, "custom_id": span.custom_id, "request_id": request_id, "id": upstream_id}
            log.info("batch line dispatched: %s", orjson.dumps(line).decode())

        while True:
            try:
                return await execute(batch.endpoint, body, principal, self._registry, dispatched)
            except UpstreamUnavailable as exc:  # Triton down or the model not ready: wait, do not fail the line
                if self._stops(batch, watch):
                    return None
                log.warning("batch %s: upstream unavailable (%s); retrying in %.1fs", batch.id, exc.message, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX)

    async def _finish(self, batch: BatchRecord, status: str, before: tuple[str, ...]) -> None:
        now = int(time.time())
        batches = self._batches
        made = await assemble(self._catalog, batches.blobs, batches.results, batch, status == "expired", now)
        files, output_id, error_id = made.files, made.output_file_id, made.error_file_id
        if await self._catalog.finish(batch.id, before, status, now, files, output_id, error_id):
            await batches.results.remove(batch.id)
            done = await self._catalog.batch(batch.id)
            counts = f"{done.completed} completed, {done.failed} failed of {done.total}" if done else ""
            log.info("batch %s %s: %s", batch.id, status, counts)
