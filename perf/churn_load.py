"""The churn benchmark's load phase: closed-loop workers sending the mix back to back, the sampling
and progress lines beside them, then the drain of in-flight slots and the final checks."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from typing import Any

import aiohttp
import orjson

from perf.churn_deployments import DeploymentCycler
from perf.churn_http import COUNTERS, api_request, final_checks, one_request, read_metrics
from perf.churn_mix import (
    EMBEDDING,
    GENERATE,
    KINDS,
    PATHS,
    REAL,
    TRANSCRIPTION,
    TRANSCRIPTIONS,
    Mix,
    api_body,
    request_body,
)
from perf.churn_outcome import Record, unexpected
from perf.churn_report import progress_line
from perf.churn_sampler import Sampler


class Load:
    """The running load: the records so far and the counters the progress line shows."""

    def __init__(self, args: argparse.Namespace, base: str, speech: bytes | None = None) -> None:
        self.args = args
        self.base = base
        self.models = {REAL: args.real_model, EMBEDDING: args.embed_model, TRANSCRIPTION: args.transcribe_model}
        self.bodies = {
            name: orjson.dumps(
                request_body(kind, self.models.get(kind.model, args.synthetic_model), args.real_max_tokens)
            )
            for name, kind in KINDS.items()
            if kind.api in GENERATE
        }
        self.speech = speech  # the wav the transcribe kind sends
        self.mix = Mix(args.weights)
        self.records: list[Record] = []
        self.errors = 0
        self.hung = 0
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.duration

    def stop_early(self) -> None:
        self.deadline = min(self.deadline, time.monotonic())

    async def worker(self, session: aiohttp.ClientSession, index: int) -> None:
        rng = random.Random(f"{self.args.seed}:{index}")
        while time.monotonic() < self.deadline:
            name = self.mix.pick(rng)
            kind = KINDS[name]
            cut = rng.randint(1, 3) if kind.disconnect else 0
            if kind.api in GENERATE:
                url = self.base + PATHS[kind.api]
                record = await one_request(session, url, name, kind, self.bodies[name], cut, self.t0)
            else:
                record = await self.api(session, rng, name, cut)
            if self.note(record) and self.args.error_backoff:
                await asyncio.sleep(self.args.error_backoff)

    def note(self, record: Record) -> bool:
        """Add a finished request's record; whether its outcome is unexpected."""
        self.records.append(record)
        if record.outcome == "hung":
            self.hung += 1
        bad = unexpected(record.outcome, self.args.allow)
        self.errors += int(bad)
        return bad

    async def api(self, session: aiohttp.ClientSession, rng: random.Random, name: str, cut: int) -> Record:
        """One request of an embeddings, rerank or transcriptions kind, its body drawn now; a disconnect
        kind closes its connection 0, 20 or 200 ms after sending (``cut`` 1-3): before the gateway has
        read it, while it tokenizes, or while Triton computes."""
        kind = KINDS[name]
        model = self.models[kind.model]
        body = {"model": model} if kind.api == TRANSCRIPTIONS else api_body(kind, model, rng)
        close_after = (0.0, 0.0, 0.02, 0.2)[cut]
        return await api_request(session, self.base, name, kind, body, self.t0, self.speech, close_after)


async def churn(
    args: argparse.Namespace, base: str, sampler: Sampler, proc_alive: Any, speech: bytes | None = None
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        metrics_before = await read_metrics(session, base)
        load = Load(args, base, speech)
        cpu0 = time.process_time()
        sampler.sample(0.0)
        with contextlib.suppress(NotImplementedError):  # Ctrl-C: stop sending, drain, report
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, load.stop_early)
        shares = ", ".join(f"{k} {v:.0%}" for k, v in load.mix.shares().items())
        print(
            f"[churn] {args.concurrency} workers for {args.duration:g}s against {base} ({shares})",
            file=sys.stderr,
            flush=True,
        )
        workers = [asyncio.create_task(load.worker(session, i)) for i in range(args.concurrency)]
        cycler = None
        if args.deployment_cycles:  # one more task: deployments created, used and deleted under the load
            cycler = DeploymentCycler(base, load.t0, load.note, args.seed, args.request_timeout, headers)
            workers.append(asyncio.create_task(cycler.run(lambda: load.deadline)))
        gateway_exited = False

        async def monitor() -> None:
            nonlocal gateway_exited
            next_progress = args.progress_interval
            last_count, last_t = 0, 0.0
            while True:
                await asyncio.sleep(args.sample_interval)
                t = time.monotonic() - load.t0
                s = sampler.sample(t)
                if not proc_alive():
                    gateway_exited = True
                if t >= next_progress:
                    next_progress += args.progress_interval
                    n = len(load.records)
                    recent = (n - last_count) / (t - last_t) if t > last_t else 0.0
                    last_count, last_t = n, t
                    line = progress_line(t, n, n / t, recent, load.errors, load.hung, s)
                    print(line, file=sys.stderr, flush=True)

        watcher = asyncio.create_task(monitor())
        try:
            await asyncio.gather(*workers)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(NotImplementedError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
        window = time.monotonic() - load.t0
        client_cpu = time.process_time() - cpu0
        # the gateway should let go of every slot once the load is over: give it 10 s
        metrics = await read_metrics(session, base)
        for _ in range(20):
            if not metrics["gateway_requests_in_flight"] and not metrics["gateway_upstream_requests_in_flight"]:
                break
            await asyncio.sleep(0.5)
            metrics = await read_metrics(session, base)
        checks = await final_checks(session, base, args, speech)
        sampler.sample(time.monotonic() - load.t0)
        if not proc_alive():
            gateway_exited = True
    for name in COUNTERS:
        before, after = metrics_before.get(name), metrics.get(name)
        if before is not None and after is not None:
            metrics[name] = after - before
    return {
        "records": load.records,
        "window": window,
        "metrics": metrics,
        "final_checks": checks,
        "gateway_exited": gateway_exited,
        "client_cpu_cores": client_cpu / window if window > 0 else None,
        "deployments": cycler.summary() if cycler is not None else None,
    }
