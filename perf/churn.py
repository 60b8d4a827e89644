"""Churn: sustained mixed load against the gateway, as a gate for leaks, hangs and Triton crashes.

A closed loop of ``--concurrency`` workers sends requests back to back for ``--duration`` seconds,
each one of a kind drawn from ``--mix``: 1-token streams, long streams, stop-string streams, n=2,
non-streaming requests and streams the client drops after 1-3 SSE events, mostly on the
``synthetic`` model and a small share on the real CPU model. Every outcome is classified (see
``perf/churn_report.py``). Every few seconds the gateway's RSS and open fds and the tritonserver
pid are sampled; at the end /health, /ready and a plain request per model are checked.

Exits 1 when Triton restarted or went away, or any request failed, hung or broke unexpectedly.

    python -m perf.churn --launch [--duration 600] [--concurrency 16] [--mix one_token=20,...]
    python -m perf.churn --url http://HOST:8080 [--gateway-pid PID] [--gateway-log FILE]

Writes perf/results/churn_<time>.json (every figure), .png (over time) and .csv (every request);
with --launch also the gateway's and Triton's logs beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from gateway.config import REPO_ROOT
from perf.churn_report import (
    DEFAULT_MIX,
    KINDS,
    REAL,
    Kind,
    Mix,
    Record,
    Sample,
    error_code,
    failures,
    finish_outcome,
    finish_reason_of,
    format_summary,
    has_content,
    nonstream_outcome,
    outcome_class,
    parse_metric,
    parse_mix,
    plot,
    progress_line,
    request_body,
    resources,
    summarize,
    timeline,
    unexpected,
)
from perf.sse import SSEParser
from perf.stack import launch_stack, process_cpu_seconds

RESTART_LINE = b"tritonserver exited unexpectedly"
JSON_HEADERS = {"Content-Type": "application/json"}
METRICS = (
    "gateway_triton_restarts_total",
    "gateway_requests_in_flight",
    "gateway_upstream_requests_in_flight",
    "gateway_client_disconnects_total",
    "gateway_upstream_errors_total",
)
COUNTERS = ("gateway_client_disconnects_total", "gateway_upstream_errors_total")  # reported as increases


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.churn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--launch", action="store_true", help="start `python -m gateway serve` on free ports")
    where.add_argument("--url", default="http://127.0.0.1:8080", help="a running gateway (default %(default)s)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop workers (default %(default)s)")
    parser.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help=f"KIND=WEIGHT,... over {', '.join(KINDS)}; kinds left out get no traffic (default %(default)s)",
    )
    parser.add_argument("--synthetic-model", default="synthetic", help="model id of the synthetic upstream")
    parser.add_argument("--real-model", default="smollm2-135m-instruct", help="model id of the real CPU model")
    parser.add_argument("--real-max-tokens", type=int, default=8, help="max_tokens of real_stream/real_nonstream")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="per request; past it: 'hung'")
    parser.add_argument("--sample-interval", type=float, default=2.0, help="seconds between RSS/fd/pid samples")
    parser.add_argument("--progress-interval", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--error-backoff", type=float, default=0.05, help="a worker's pause after a failed request (s)")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="OUTCOME",
        help="outcome prefixes that do not fail the gate, e.g. http_503:server_overloaded (repeatable, or commas)",
    )
    parser.add_argument("--gateway-pid", type=int, default=0, help="with --url (default: who listens on its port)")
    parser.add_argument("--gateway-log", type=Path, default=None, help="with --url: the gateway's log, to scan")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""), help="sent as a Bearer token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    try:
        args.weights = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    args.allow = [a.strip() for item in args.allow for a in item.split(",") if a.strip()]
    for name in ("duration", "request_timeout", "sample_interval", "progress_interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    if args.real_max_tokens < 1:
        parser.error("--real-max-tokens must be >= 1")
    if args.error_backoff < 0:
        parser.error("--error-backoff must be >= 0")
    return args


# --- /proc ---


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    return head.partition("(")[2], fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def process_table() -> dict[int, tuple[str, str, int]]:
    """Every live process: pid -> (comm, state, ppid)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] not in ("Z", "X"):
                table[int(entry)] = stat
    return table


def find_child(table: dict[int, tuple[str, str, int]], ppid: int, comm: str = "tritonserver") -> int | None:
    """A live child of ``ppid`` named ``comm`` (the embedded Triton the gateway launched)."""
    return next((pid for pid, (name, _, parent) in table.items() if parent == ppid and name == comm), None)


def descendants(table: dict[int, tuple[str, str, int]], root: int) -> list[int]:
    """``root`` and every process under it (Triton's Python-backend model processes)."""
    children: dict[int, list[int]] = {}
    for pid, (_, _, parent) in table.items():
        children.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` (found through the socket's inode)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry)
    return None


class Sampler:
    """Samples the gateway process, its tritonserver child, and the gateway's log."""

    def __init__(self, pid: int, log: Path | None) -> None:
        self.pid = pid
        self.log = log
        self._offset = 0
        self._tail = b""
        self.log_restarts = 0
        self.samples: list[Sample] = []

    def _scan_log(self) -> None:
        if self.log is None:
            return
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        self._offset += len(chunk)
        text = self._tail + chunk
        cut = text.rfind(b"\n") + 1  # count whole lines only
        self.log_restarts += text[:cut].count(RESTART_LINE)
        self._tail = text[cut:]

    def sample(self, t: float) -> Sample:
        self._scan_log()
        pid = self.pid
        table = process_table()
        triton = find_child(table, pid) if pid in table else None
        tree = [_rss_kb(p) for p in descendants(table, triton)] if triton else []
        s = Sample(
            t=round(t, 3),
            gateway_rss_kb=_rss_kb(pid) if pid else None,
            gateway_fds=_fds(pid) if pid else None,
            gateway_cpu_s=process_cpu_seconds(pid) if pid in table else None,
            triton_pid=triton,
            triton_rss_kb=sum(kb for kb in tree if kb is not None) if triton else None,
            log_restarts=self.log_restarts,
        )
        self.samples.append(s)
        return s


# --- requests ---


class Load:
    """The running load: the records so far and the counters the progress line shows."""

    def __init__(self, args: argparse.Namespace, base: str) -> None:
        self.args = args
        self.chat = base + "/v1/chat/completions"
        self.models = {REAL: args.real_model}
        self.bodies = {
            name: orjson.dumps(
                request_body(kind, self.models.get(kind.model, args.synthetic_model), args.real_max_tokens)
            )
            for name, kind in KINDS.items()
        }
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
            record = await one_request(session, self.chat, name, kind, self.bodies[name], cut, self.t0)
            self.records.append(record)
            if record.outcome == "hung":
                self.hung += 1
            if unexpected(record.outcome, self.args.allow):
                self.errors += 1
                if self.args.error_backoff:
                    await asyncio.sleep(self.args.error_backoff)


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


async def churn(args: argparse.Namespace, base: str, sampler: Sampler, proc_alive: Any) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=args.concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        metrics_before = await read_metrics(session, base)
        load = Load(args, base)
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
        checks = await final_checks(session, base, args)
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
    }


def build_result(args: argparse.Namespace, run: dict[str, Any], samples: list[Sample]) -> dict[str, Any]:
    records: list[Record] = run["records"]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}
    result: dict[str, Any] = {
        "config": config,
        "summary": summarize(records, run["window"], args.allow),
        "resources": resources(samples, warm_t=min(30.0, 0.1 * args.duration)),
        "metrics": run["metrics"],
        "final_checks": run["final_checks"],
        "gateway_exited": run["gateway_exited"],
        "client_cpu_cores": run["client_cpu_cores"],
        "timeline": timeline(records, args.sample_interval, run["window"]),
        "samples": [asdict(s) for s in samples],
    }
    result["failures"] = failures(result)
    result["passed"] = not result["failures"]
    return result


def write_outputs(base: Path, result: dict[str, Any], records: list[Record]) -> list[Path]:
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{base}.json"), Path(f"{base}.csv"), Path(f"{base}.png")]
    paths[0].write_text(json.dumps(result, indent=2, default=str))
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "start_s", "end_s", "ttft_ms", "outcome", "class"])
        for r in records:
            ttft = round(r.ttft * 1000, 2) if r.ttft else ""
            writer.writerow([r.kind, round(r.start, 4), round(r.end, 4), ttft, r.outcome, outcome_class(r.outcome)])
    plot(result, paths[2])
    return paths


def _run_loop(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """uvloop when installed (as the gateway runs): the client's own CPU is what it shares with the stack."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base = args.out / f"churn_{stamp}"
    args.out.mkdir(parents=True, exist_ok=True)
    stack = None
    cache: str | None = None
    extra: list[Path] = []
    try:
        if args.launch:
            if "GATEWAY_CACHE_DIR" not in os.environ:  # its own Triton log and backend dir, beside other stacks
                cache = tempfile.mkdtemp(prefix="churn-cache-")
                os.environ["GATEWAY_CACHE_DIR"] = cache
            log = Path(f"{base}_gateway.log")
            stack = launch_stack(log=log)
            url, pid, extra = stack.gateway, stack.pid, [log]
            process = stack.process

            def proc_alive() -> bool:
                return process.poll() is None

        else:
            url = args.url.rstrip("/")
            log = args.gateway_log
            pid = args.gateway_pid or listener_pid(urlsplit(url).port or 80) or 0
            if not pid:
                print("[churn] gateway pid unknown (pass --gateway-pid): no RSS/fd samples", file=sys.stderr)

            def proc_alive() -> bool:
                return not pid or alive(pid)

        sampler = Sampler(pid, log)
        run = _run_loop(churn(args, url, sampler, proc_alive))
    finally:
        if stack is not None:
            stack.stop()
        if cache is not None:
            triton_log = Path(cache) / "tritonserver.log"
            if triton_log.exists():
                shutil.copy(triton_log, f"{base}_triton.log")
                extra.append(Path(f"{base}_triton.log"))
            shutil.rmtree(cache, ignore_errors=True)
    result = build_result(args, run, sampler.samples)
    paths = write_outputs(base, result, run["records"])
    print(format_summary(result))
    print("\nwrote " + ", ".join(str(p) for p in [*paths, *extra]))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
