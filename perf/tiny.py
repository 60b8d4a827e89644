"""Tiny requests: what the gateway costs per request, when the model costs nothing (issue 13).

Against the ``synthetic`` model (no compute: one token after its configured TTFT, 20 ms in
model_repository/synthetic/config.pbtxt, the smallest there is; it is a model parameter, not a request
field), each turn is a closed loop of ``concurrency`` workers for ``--seconds``, each sending 1-token
requests; the targets take turns round by round (who goes first alternates):

- ``chat-stream``: ``POST /v1/chat/completions``, one short user message, ``max_tokens`` 1, ``stream``
  true, the SSE read to ``[DONE]``;
- ``chat``: the same, not streamed (the body read whole);
- ``direct``: the same prompt's token ids (the gateway's ``POST /tokenize`` with the same messages, so the
  chat template is included, asked once) sent straight to Triton's ``ModelStreamInfer`` on a bare grpc.aio
  stub (as perf/bench.py does), ``request_output_len`` 1, read to the final response.

Reported per target and concurrency: requests/s, latency p50/p90/p99, the gateway process's CPU µs per
request (its CPU over the turn / requests; net: less what it burns idle, measured during the direct
turns), and gateway/direct ratios of requests/s and the latency the gateway adds at p50/p99. The issue's
goal: gateway CPU per request <= 400 µs.

    python -m perf.tiny --launch [--rounds 3] [--concurrency 1,8] [--seconds 3] [--profile] [--baseline REV] [--floor]
    python -m perf.tiny --gateway http://127.0.0.1:8080 --triton 127.0.0.1:8001 [--gateway-pid PID]

``--baseline REV`` is the before/after of a change in one run: two more gateways, this checkout's and
revision REV's (a git worktree under the system's temp directory, removed afterwards), in front of the
same Triton, serving ``synthetic`` alone; their chat targets take turns with direct, and the table adds
the CPU per request of this checkout over REV's.

``--floor`` adds the transport floor's two chat targets (perf/floor.py: aiohttp in, shared grpc.aio streams
out, nothing else; launched on a free port in front of the same Triton), and reports the gateway's own CPU
per request: its net CPU less the floor's.

``--profile`` runs py-spy on the gateway during one extra chat-stream turn and prints the top functions by
inclusive share. Writes perf/results/tiny.json and perf/results/tiny.png, and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.config import REPO_ROOT
from perf import targets
from perf.metrics import percentile
from perf.sse import SSEParser
from perf.stack import (
    Stack,
    floor_server,
    launch_gateway,
    positive_ints,
    process_cpu_seconds,
    ref_env,
    run_loop,
    save_results,
    stack_or_running,
    worktree,
)

STREAM, CHAT, DIRECT = "chat-stream", "chat", "direct"
FLOOR = "floor"  # the transport floor's targets: f"{FLOOR}-{kind}"
TARGETS = (STREAM, CHAT, DIRECT)
GATEWAY_TARGETS = (STREAM, CHAT)
MESSAGES = [{"role": "user", "content": "Say hi."}]
GOAL_US = 400.0  # issue 13: gateway CPU per request
JSON_HEADERS = {"Content-Type": "application/json"}

# --- pure figures ---


@dataclass
class Turn:
    """One target's turn at one concurrency in one round."""

    latencies: list[float] = field(default_factory=list)  # s, successful requests only
    errors: int = 0
    wall_s: float = 0.0
    gateway_cpu_s: float = 0.0  # the CPU of the target's gateway (for direct: the main gateway's idle burn)
    first_error: str = ""
    cpu_s: dict[int, float] = field(default_factory=dict)  # every gateway's CPU over the turn, by pid
    client_cpu_s: float = 0.0  # this process's: for direct, what a bare grpc.aio client costs

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors


def pooled(turns: list[Turn], have_pid: bool) -> dict[str, Any]:
    """One target's figures over its turns at one concurrency."""
    lat = [x for t in turns for x in t.latencies]
    requests = sum(t.requests for t in turns)
    wall = sum(t.wall_s for t in turns)
    cpu = sum(t.gateway_cpu_s for t in turns)
    return {
        "requests": requests,
        "errors": sum(t.errors for t in turns),
        "first_error": next((t.first_error for t in turns if t.first_error), ""),
        "wall_s": wall,
        "requests_per_s": len(lat) / wall if wall > 0 else math.nan,
        "rounds_requests_per_s": [len(t.latencies) / t.wall_s if t.wall_s > 0 else math.nan for t in turns],
        "p50_ms": percentile(lat, 50) * 1000 if lat else math.nan,
        "p90_ms": percentile(lat, 90) * 1000 if lat else math.nan,
        "p99_ms": percentile(lat, 99) * 1000 if lat else math.nan,
        "gateway_cpu_us_per_request": cpu / requests * 1e6 if have_pid and requests else None,
        "gateway_cpu_ms_per_s": cpu / wall * 1000 if have_pid and wall > 0 else None,
        "client_cpu_us_per_request": sum(t.client_cpu_s for t in turns) / requests * 1e6 if requests else None,
    }


def compare(gw: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """Adds to ``gw`` its ratio to direct, the latency it adds and its CPU per request net of idle
    (what the gateway burned per second during the direct turns, times its own wall time)."""
    out = dict(gw)
    out["requests_per_s_vs_direct"] = (
        gw["requests_per_s"] / direct["requests_per_s"] if direct["requests_per_s"] > 0 else math.nan
    )
    out["added_p50_ms"] = gw["p50_ms"] - direct["p50_ms"]
    out["added_p99_ms"] = gw["p99_ms"] - direct["p99_ms"]
    idle = direct["gateway_cpu_ms_per_s"]
    if gw["gateway_cpu_us_per_request"] is not None and idle is not None and gw["requests"]:
        net_s = gw["gateway_cpu_us_per_request"] / 1e6 * gw["requests"] - idle / 1000 * gw["wall_s"]
        out["gateway_net_cpu_us_per_request"] = net_s / gw["requests"] * 1e6
        out["meets_goal"] = out["gateway_net_cpu_us_per_request"] <= GOAL_US
    else:
        out["gateway_net_cpu_us_per_request"] = None
        out["meets_goal"] = None
    return out


def top_inclusive(collapsed: str, n: int = 25) -> list[tuple[str, float]]:
    """The ``n`` functions with the largest inclusive share of the samples in py-spy's raw (collapsed)
    output: ``frame;frame;frame COUNT`` per line. A function counts once per stack, however deep its recursion."""
    total = 0
    counts: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        for frame in {f.strip() for f in stack.split(";") if f.strip()}:
            counts[frame] += samples
    if not total:
        return []
    return [(frame, c / total) for frame, c in counts.most_common(n)]


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    baseline = result["config"].get("baseline")
    lines = [
        "",
        f"1-token requests to '{result['config']['model']}' (synthetic: no compute, {result['ttft_ms']} ms TTFT), "
        f"{result['config']['rounds']} interleaved rounds of {result['config']['seconds']:g}s",
        f"{'conc':>4} {'target':<20} {'req/s':>8} {'vs dir':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'+p50':>6} {'+p99':>6} {'gw CPU µs/req':>13} {'net':>6} {'goal':>5} {'vs base':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    for row in result["results"]:
        for target in result.get("targets", TARGETS):
            r = row[target]
            goal = r.get("meets_goal")
            lines.append(
                f"{row['concurrency']:>4} {target:<20} {r['requests_per_s']:>8.1f} "
                f"{_f(r.get('requests_per_s_vs_direct'), 3):>6} {r['p50_ms']:>7.2f} {r['p90_ms']:>7.2f} "
                f"{r['p99_ms']:>7.2f} {_f(r.get('added_p50_ms'), 2):>6} {_f(r.get('added_p99_ms'), 2):>6} "
                f"{_f(r['gateway_cpu_us_per_request'], 0) if target != DIRECT else '-':>13} "
                f"{_f(r.get('gateway_net_cpu_us_per_request'), 0):>6} "
                f"{'-' if goal is None else ('ok' if goal else 'MISS'):>5} {_f(r.get('cpu_vs_baseline'), 3):>7}"
            )
            if r["errors"]:
                lines.append(f"     {r['errors']} failed request(s): {r['first_error']}")
        idle = row[DIRECT]["gateway_cpu_ms_per_s"]
        floor = row[DIRECT].get("client_cpu_us_per_request")
        lines.append(
            f"     (the gateway idle, during the direct turns: {_f(idle, 2)} ms CPU per s; the direct client, a bare "
            f"grpc.aio stub, {_f(floor, 0)} µs CPU per request: the floor of the gateway's Triton side)"
        )
        if f"{FLOOR}-{STREAM}" in row:
            lines.append(
                "     (the gateway's own CPU per request, its net less the transport floor's: "
                + ", ".join(f"{k} {_f(row[k].get('own_cpu_us_per_request'), 0)} µs" for k in GATEWAY_TARGETS)
                + ")"
            )
    lines.append(
        f"gw CPU: the gateway process's CPU per request; net: less its idle burn. "
        f"Issue 13's goal: net gateway CPU per request <= {GOAL_US:.0f} µs."
        + (" vs base: net CPU per request over the baseline's (< 1: this checkout costs less)." if baseline else "")
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["results"]
    names = result.get("targets", TARGETS)
    gateways = [n for n in names if n != DIRECT]
    concs = [r["concurrency"] for r in rows]
    x = np.arange(len(concs))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    width = 0.8 / len(gateways)
    for k, target in enumerate(gateways):
        gross = [r[target]["gateway_cpu_us_per_request"] or math.nan for r in rows]
        net = [r[target]["gateway_net_cpu_us_per_request"] or math.nan for r in rows]
        offset = (k - (len(gateways) - 1) / 2) * width
        ax.bar(x + offset, gross, width, alpha=0.35, color=f"C{k}", label=f"{target} (gross)")
        ax.bar(x + offset, net, width * 0.6, color=f"C{k}", label=f"{target} (net of idle)")
    ax.axhline(GOAL_US, color="tab:red", linestyle="--", label=f"goal {GOAL_US:.0f} µs (issue 13)")
    ax.set(title="gateway CPU per request", ylabel="µs", xticks=x, xlabel="concurrency")
    ax.set_xticklabels([str(c) for c in concs])
    ax = axes[1]
    width = 0.8 / (len(names) * 2)
    for k, target in enumerate(names):
        for j, stat in enumerate(("p50_ms", "p99_ms")):
            offset = (2 * k + j - len(names) + 0.5) * width
            ax.bar(
                x + offset,
                [r[target][stat] for r in rows],
                width,
                color=f"C{k}",
                alpha=1.0 if j == 0 else 0.5,
                label=f"{target} {stat[:3]}",
            )
    ax.set(title="latency", ylabel="ms", xticks=x, xlabel="concurrency")
    ax.set_xticklabels([str(c) for c in concs])
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"1-token requests: gateway vs Triton direct ({result['ttft_ms']} ms synthetic TTFT)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the targets ---


class Clients:
    def __init__(self, gateway: str, triton: str, model: str, timeout: float) -> None:
        self.base = gateway.rstrip("/")
        self.model = model
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout)
        )
        self.channel = grpc.aio.insecure_channel(triton)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        body = {"model": model, "messages": MESSAGES, "max_tokens": 1, "temperature": 0}
        self.chat_body = orjson.dumps(body)
        self.stream_body = orjson.dumps({**body, "stream": True})
        self.request: service_pb2.ModelInferRequest | None = None
        self.workload: targets.Workload | None = None

    async def prepare(self, triton_model: str) -> list[int]:
        body = orjson.dumps({"model": self.model, "messages": MESSAGES, "add_generation_prompt": True})
        async with self.http.post(self.base + "/tokenize", data=body, headers=JSON_HEADERS) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise SystemExit(f"/tokenize: HTTP {resp.status}: {raw[:300]!r}")
        ids: list[int] = orjson.loads(raw)["tokens"]
        self.workload = targets.Workload(MESSAGES, ids, ids, 1)
        self.request = targets.direct_request(triton_model, self.workload)
        return ids

    async def close(self) -> None:
        await self.http.close()
        await self.channel.close()

    async def chat_stream(self) -> None:
        url = self.base + "/v1/chat/completions"
        async with self.http.post(url, data=self.stream_body, headers=JSON_HEADERS) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
            parser = SSEParser()
            async for chunk in resp.content.iter_any():
                for data in parser.feed(chunk):
                    if data == b"[DONE]":
                        return
                    if data.startswith(b'{"error"'):
                        raise RuntimeError(data[:200].decode(errors="replace"))
            raise RuntimeError("the stream ended without [DONE]")

    async def chat(self) -> None:
        async with self.http.post(self.base + "/v1/chat/completions", data=self.chat_body, headers=JSON_HEADERS) as r:
            raw = await r.read()
            if r.status != 200 or b'"choices"' not in raw:
                raise RuntimeError(f"HTTP {r.status}: {raw[:200]!r}")

    async def direct(self) -> None:
        assert self.request is not None and self.workload is not None
        record = await targets.triton_direct(self.stub, self.request, self.workload)
        if record.error or record.output_tokens != 1:
            raise RuntimeError(f"direct: {record.error or f'{record.output_tokens} tokens'}")

    def send(self, target: str) -> Callable[[], Awaitable[None]]:
        return {STREAM: self.chat_stream, CHAT: self.chat, DIRECT: self.direct}[target]


async def closed_loop(
    send: Callable[[], Awaitable[None]], concurrency: int, seconds: float, pid: int, others: tuple[int, ...] = ()
) -> Turn:
    """``concurrency`` requests always in flight for ``seconds``; the wall time runs to the last answer.
    The CPU of gateway ``pid`` over the turn, and of every one of ``others`` too."""
    turn = Turn()
    pids = tuple(dict.fromkeys((pid, *others)))
    cpu0 = {p: process_cpu_seconds(p) for p in pids}
    client0 = time.process_time()
    start = time.monotonic()
    deadline = start + seconds
    last = start

    async def worker() -> None:
        nonlocal last
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                await send()
            except Exception as exc:
                turn.errors += 1
                turn.first_error = turn.first_error or f"{type(exc).__name__}: {exc}"[:300]
            else:
                turn.latencies.append(time.monotonic() - t0)
            last = time.monotonic()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    turn.wall_s = last - start
    turn.client_cpu_s = time.process_time() - client0
    turn.cpu_s = {p: process_cpu_seconds(p) - cpu0[p] for p in pids if p}
    turn.gateway_cpu_s = turn.cpu_s.get(pid, 0.0)
    return turn


async def profile(clients: Clients, concurrency: int, seconds: float, pid: int, out: Path) -> list[tuple[str, float]]:
    """py-spy on the gateway during one more chat-stream turn; the top functions by inclusive share."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out / "tiny_profile.txt"
    proc = await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "500", "--nonblocking",
        "--duration", str(math.ceil(seconds) + 1), "--output", str(raw),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.5)  # py-spy attaching
    await closed_loop(clients.send(STREAM), concurrency, seconds, pid)
    _, err = await proc.communicate()
    if proc.returncode != 0 or not raw.exists():
        _say(f"py-spy failed ({proc.returncode}): {err.decode(errors='replace').strip()[-300:]}")
        return []
    return top_inclusive(raw.read_text())


@dataclass(frozen=True)
class Arm:
    """One target of the run: what it sends, through which gateway (pid 0: none, or unknown)."""

    name: str
    kind: str  # STREAM, CHAT or DIRECT
    clients: Clients
    pid: int


async def measure(args: argparse.Namespace, pid: int, baseline: tuple[str, str, int] | None = None) -> dict[str, Any]:
    """Every arm's turns, interleaved round by round; ``baseline``: (revision, gateway URL, pid) of a
    second gateway whose chat targets take their turns too."""
    clients = Clients(args.gateway, args.triton, args.model, args.request_timeout)
    arms = [Arm(STREAM, STREAM, clients, pid), Arm(CHAT, CHAT, clients, pid), Arm(DIRECT, DIRECT, clients, 0)]
    base_clients = None
    if baseline is not None:
        rev, url, base_pid = baseline
        base_clients = Clients(url, args.triton, args.model, args.request_timeout)
        arms += [
            Arm(f"{STREAM}@{rev}", STREAM, base_clients, base_pid),
            Arm(f"{CHAT}@{rev}", CHAT, base_clients, base_pid),
        ]
    pids = tuple(arm.pid for arm in arms if arm.pid)
    turns: dict[tuple[int, str], list[Turn]] = {}
    top: list[tuple[str, float]] = []
    async with AsyncExitStack() as stack:
        stack.push_async_callback(clients.close)
        if base_clients is not None:
            stack.push_async_callback(base_clients.close)
        ids = await clients.prepare(args.triton_model)  # the baseline's chat targets need no ids
        _say(f"the prompt is {len(ids)} tokens with the chat template")
        if args.floor:
            log = args.out / "tiny_floor.log"
            floor = stack.enter_context(floor_server(args.triton, args.triton_model, ids, 1, log))
            floor_clients = Clients(floor[0], args.triton, args.model, args.request_timeout)
            stack.push_async_callback(floor_clients.close)
            arms += [Arm(f"{FLOOR}-{kind}", kind, floor_clients, floor[1]) for kind in GATEWAY_TARGETS]
            pids = tuple(arm.pid for arm in arms if arm.pid)
        for arm in arms:  # warm-up, not counted
            await closed_loop(arm.clients.send(arm.kind), max(args.concurrency), 0.5, 0)
        for rnd in range(args.rounds):
            order = arms if rnd % 2 == 0 else arms[::-1]
            for conc in args.concurrency:
                for arm in order:
                    turn = await closed_loop(arm.clients.send(arm.kind), conc, args.seconds, arm.pid or pid, pids)
                    turns.setdefault((conc, arm.name), []).append(turn)
                    cpu = f", gateway {turn.gateway_cpu_s / turn.requests * 1e6:.0f} µs/req" if turn.requests else ""
                    _say(
                        f"round {rnd + 1}/{args.rounds} concurrency {conc} {arm.name:<11} "
                        f"{len(turn.latencies) / turn.wall_s if turn.wall_s else 0:7.1f} req/s"
                        f" p50 {percentile(turn.latencies, 50) * 1000 if turn.latencies else math.nan:.2f} ms{cpu}"
                        + (f", {turn.errors} errors: {turn.first_error}" if turn.errors else "")
                    )
        if args.profile and pid:
            conc = max(args.concurrency)
            _say(f"profiling the gateway with py-spy: one chat-stream turn at concurrency {conc}")
            top = await profile(clients, conc, args.seconds, pid, args.out)
    results = []
    for conc in args.concurrency:
        direct_turns = turns[(conc, DIRECT)]
        row: dict[str, Any] = {"concurrency": conc, DIRECT: pooled(direct_turns, bool(pid))}
        for arm in arms:
            if arm.kind != DIRECT:  # its net CPU: less its own gateway's idle burn during the direct turns
                idle = [replace(t, gateway_cpu_s=t.cpu_s.get(arm.pid, 0.0)) for t in direct_turns]
                row[arm.name] = compare(pooled(turns[(conc, arm.name)], bool(arm.pid)), pooled(idle, bool(arm.pid)))
        if baseline is not None:
            for kind in GATEWAY_TARGETS:
                row[kind]["cpu_vs_baseline"] = cpu_ratio(row[kind], row[f"{kind}@{baseline[0]}"])
        if args.floor:
            for kind in GATEWAY_TARGETS:
                row[kind]["own_cpu_us_per_request"] = over_floor(row[kind], row[f"{FLOOR}-{kind}"])
        results.append(row)
    return {"prompt_tokens": len(ids), "targets": [arm.name for arm in arms], "results": results, "profile_top": top}


def cpu_ratio(new: dict[str, Any], old: dict[str, Any]) -> float | None:
    """This checkout's net CPU per request over the baseline's (below 1: the change saves CPU)."""
    a, b = new.get("gateway_net_cpu_us_per_request"), old.get("gateway_net_cpu_us_per_request")
    return a / b if a is not None and b else None


def over_floor(gateway: dict[str, Any], floor: dict[str, Any]) -> float | None:
    """The gateway's own net CPU per request: what it costs beyond aiohttp and grpc.aio (the floor's)."""
    a, b = gateway.get("gateway_net_cpu_us_per_request"), floor.get("gateway_net_cpu_us_per_request")
    return a - b if a is not None and b is not None else None


def _ttft_ms() -> str:
    config = (REPO_ROOT / "model_repository" / "synthetic" / "config.pbtxt").read_text()
    for line in config.splitlines():
        if '"ttft_ms"' in line:
            return line.split('string_value: "')[1].split('"')[0]
    return "?"


# --- command line ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.tiny", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--launch", action="store_true", help="start `python -m gateway serve` on free ports")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="a running gateway (without --launch)")
    parser.add_argument("--triton", default="127.0.0.1:8001", help="its Triton's gRPC HOST:PORT (without --launch)")
    parser.add_argument("--gateway-pid", type=int, default=0, help="default: who listens on the gateway's port")
    parser.add_argument("--model", default="synthetic", help="model id at the gateway")
    parser.add_argument("--triton-model", default="synthetic")
    parser.add_argument("--concurrency", type=positive_ints, default=[1, 8], help="requests in flight (default 1,8)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each target takes, interleaved")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of one turn (s)")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway during one more chat-stream turn")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument(
        "--baseline", default="", metavar="REV", help="also run revision REV's gateway, side by side (git worktree)"
    )
    parser.add_argument("--floor", action="store_true", help="also measure the transport floor (perf/floor.py)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be >= 1, --seconds > 0")
    return args


@contextmanager
def side_by_side(args: argparse.Namespace, log: Path) -> Iterator[tuple[Stack, Stack]]:
    """This checkout's gateway and revision ``args.baseline``'s (a git worktree, removed afterwards), both in
    front of ``args.triton``."""
    verify = ["git", "rev-parse", "--verify", f"{args.baseline}^{{commit}}"]
    commit = subprocess.run(verify, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if commit.returncode != 0:
        raise SystemExit(f"--baseline {args.baseline!r}: not a revision of this repository")
    sha = commit.stdout.strip()
    with worktree(sha, Path(tempfile.gettempdir()) / f"gateway-baseline-{sha[:12]}") as tree:
        env = ref_env(tree, tree / ".cache")
        codegen = [sys.executable, "-m", "gateway.grpcapi.codegen"]
        subprocess.run(codegen, cwd=tree, env={**os.environ, **env}, check=True)
        main_gateway = launch_gateway(args.triton, args.model, args.triton_model, {}, log.with_name("tiny_main.log"))
        try:
            base = launch_gateway(args.triton, args.model, args.triton_model, env, log.with_name("tiny_baseline.log"))
            try:
                yield main_gateway, base
            finally:
                base.stop()
        finally:
            main_gateway.stop()


def _say(line: str) -> None:
    print(f"[tiny] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log = args.out / "tiny_stack.log"
    with stack_or_running(args.launch, args.gateway, args.triton, args.gateway_pid, log) as target:
        args.gateway, args.triton, pid = target.gateway, target.triton, target.pid
        if args.baseline:
            with side_by_side(args, log) as (main_gateway, base):
                args.gateway, pid = main_gateway.gateway, main_gateway.pid
                figures = run_loop(measure(args, pid, (args.baseline, base.gateway, base.pid)))
        else:
            if not pid:
                _say("the gateway's pid is unknown (pass --gateway-pid): no gateway CPU figures")
            figures = run_loop(measure(args, pid))
    figures |= {"gateway_pid": pid, "ttft_ms": _ttft_ms(), "goal_gateway_cpu_us_per_request": GOAL_US}
    result, wrote = save_results(args, "tiny", figures, started, plot, format_table)
    if result["profile_top"]:
        print("\npy-spy, the gateway during one chat-stream turn: top functions by inclusive share")
        for frame, share in result["profile_top"]:
            print(f"  {share * 100:5.1f}%  {frame}")
    print(wrote)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
