"""Capacity: how many streams one gateway core carries in front of a GPU (issue 13, "size the gateway").

The upstream is the ``synthetic`` model (no compute) set to play TensorRT-LLM serving an 8B model on an
H100: TTFT ``--ttft-ms`` + ``--ttft-per-stream-ms`` x the streams already running (10 ms + 1.1 ms: ~10 ms
alone, ~120 ms at 100 streams) and one token every ``--token-delay-ms`` (10 ms: 100 tokens/s per stream).
With ``--launch`` those go into a temporary copy of model_repository/ (the other models linked, not
copied) served by a stack of its own (`python -m gateway serve --model-repository TMP`), and one gateway
per ``--workers`` count (`python -m gateway serve --workers W --triton-url ...`) is launched in front of
its Triton; the stack's own gateway is not measured.

At each ``--streams`` level, every target runs a closed loop of that many streaming requests
(``--output-tokens`` 128 exactly, ``--input-tokens`` 128) and they take turns for ``--rounds`` rounds
(the order alternating), so gateway and direct come from the same minutes:
- ``wN``: ``POST /v1/chat/completions`` (SSE) to the gateway launched with ``--workers N``;
- ``direct``: the same token ids straight to Triton's ``ModelStreamInfer`` on a bare grpc.aio stub.

A turn starts its streams spread over ``--warmup`` seconds, then measures ``--seconds``: the tokens that
arrive in that window (aggregate tok/s), the requests started in it (TTFT, ITL, each request's own
decode rate: "per-stream tok/s", (tokens - 1) / (last token - first token), p50), and the CPU in it of
the gateway (every gateway process: with ``--workers`` the supervisor and its workers; never Triton),
of Triton (with its model processes) and of this load generator. The streams go on until every request
started in the window has ended, so those requests see the full load to their end.

Reported per level and gateway: aggregate tok/s both ways and their ratio, TTFT and ITL p50/p99 both
ways, the ITL p99 the gateway adds (gateway - direct), the gateway's cores used and **streams per gateway
core** (streams / cores). A level qualifies when the gateway's per-stream tok/s p50 is at least
``--min-stream-tps`` (95) and its added ITL p99 at most ``--max-added-itl-ms`` (2 ms), with no errors;
the planning figure is the largest streams-per-core among qualifying levels, or, when none qualifies,
why not.

    python -m perf.capacity --launch [--workers 1,2] [--streams 10,25,50,100] [--seconds 3] [--rounds 2]
    python -m perf.capacity --gateway http://HOST:8080 --triton HOST:8001 --gateway-pid PID \\
        --model M --triton-model tensorrt_llm --tokenizer-dir DIR          # a real deployment

Progress on stderr; writes perf/results/capacity.json and perf/results/capacity.png, and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2_grpc

from gateway.config import REPO_ROOT
from gateway.text.tokenizer import Tokenizer
from perf import targets
from perf.bench import workload
from perf.churn_sampler import descendants, find_child, process_table
from perf.metrics import RequestRecord, summarize
from perf.stack import (
    Stack,
    launch_gateway,
    parse_compare,
    positive_ints,
    process_cpu_seconds,
    run_loop,
    save_results,
    stack_or_running,
)

DIRECT = "direct"
SYNTHETIC = "synthetic"
TRITON = "tritonserver"
ProcessTable = dict[int, tuple[str, str, int]]  # pid -> (comm, state, ppid), as perf.churn_sampler reads it

# --- pure figures ---


def synthetic_config(text: str, parameters: dict[str, str]) -> str:
    """The synthetic model's config.pbtxt ``text`` with ``parameters`` set (added or replaced)."""
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return str(text_format.MessageToString(config))


def gateway_processes(table: ProcessTable, root: int) -> list[int]:
    """``root`` (a ``gateway serve`` process) and every process under it but a ``tritonserver`` it launched
    and that server's own children: with ``--workers``, the supervisor and its workers."""
    if root not in table:
        return []
    triton: set[int] = set()
    for pid, (comm, _, parent) in table.items():
        if comm == TRITON and parent == root:
            triton.update(descendants(table, pid))
    return [pid for pid in descendants(table, root) if pid not in triton]


def window_tokens(records: Sequence[RequestRecord], start: float, end: float) -> float:
    """The output tokens that arrived in [start, end): chunks in the window, each worth its request's
    tokens per chunk (a gateway may put several tokens in one SSE event)."""
    total = 0.0
    for r in records:
        chunks = len(r.chunk_times)
        if not chunks:
            continue
        per_chunk = r.output_tokens / chunks if r.output_tokens >= chunks else 1.0
        total += per_chunk * sum(1 for t in r.chunk_times if start <= t < end)
    return total


@dataclass
class Turn:
    """One target's turn at one level: the requests started in the measured window, and that window's
    tokens and CPU seconds (``None``: that process is unknown)."""

    records: list[RequestRecord] = field(default_factory=list)
    window_s: float = 0.0
    tokens: float = 0.0
    gateway_cpu_s: float | None = None
    triton_cpu_s: float | None = None
    generator_cpu_s: float = 0.0


def _cores(turns: Sequence[Turn], attr: str, window: float) -> float | None:
    values = [getattr(t, attr) for t in turns]
    if window <= 0 or any(v is None for v in values):
        return None
    return float(sum(values)) / window


def pooled(turns: Sequence[Turn]) -> dict[str, Any]:
    """One target's figures at one level, over its turns (perf.metrics.summarize, with the aggregate
    tok/s taken from the tokens that arrived inside the windows)."""
    records = [r for t in turns for r in t.records]
    window = sum(t.window_s for t in turns)
    figures = summarize(records, window)
    figures["output_tokens_per_s"] = sum(t.tokens for t in turns) / window if window > 0 else math.nan
    figures["stream_tokens_per_s_p50"] = figures["tokens_per_s_per_request"]["p50"]
    figures["gateway_cores"] = _cores(turns, "gateway_cpu_s", window)
    figures["triton_cores"] = _cores(turns, "triton_cpu_s", window)
    figures["generator_cores"] = _cores(turns, "generator_cpu_s", window)
    events = sum(len(r.chunk_times) for r in records if r.ok)
    tokens = sum(r.output_tokens for r in records if r.ok)
    figures["tokens_per_event"] = tokens / events if events and tokens >= events else None
    return figures


@dataclass(frozen=True, slots=True)
class Limits:
    """What a level must meet to count for planning."""

    min_stream_tps: float = 95.0
    max_added_itl_ms: float = 2.0


def compare(gateway: str, streams: int, gw: dict[str, Any], direct: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """One gateway at one level against direct: ratios, the latency it adds, streams per gateway core,
    and whether the level qualifies (and if not, why)."""
    cores = gw["gateway_cores"]
    tps, direct_tps = gw["stream_tokens_per_s_p50"], direct["stream_tokens_per_s_p50"]
    row: dict[str, Any] = {
        "gateway": gateway,
        "streams": streams,
        "tokens_per_s": gw["output_tokens_per_s"],
        "direct_tokens_per_s": direct["output_tokens_per_s"],
        "tokens_per_s_ratio": gw["output_tokens_per_s"] / direct["output_tokens_per_s"]
        if direct["output_tokens_per_s"] > 0
        else math.nan,
        "stream_tokens_per_s": tps,
        "direct_stream_tokens_per_s": direct_tps,
        "ttft_p50_ms": gw["ttft_ms"]["p50"],
        "ttft_p99_ms": gw["ttft_ms"]["p99"],
        "direct_ttft_p50_ms": direct["ttft_ms"]["p50"],
        "direct_ttft_p99_ms": direct["ttft_ms"]["p99"],
        "itl_p50_ms": gw["itl_ms"]["p50"],
        "itl_p99_ms": gw["itl_ms"]["p99"],
        "direct_itl_p50_ms": direct["itl_ms"]["p50"],
        "direct_itl_p99_ms": direct["itl_ms"]["p99"],
        "added_itl_p99_ms": gw["itl_ms"]["p99"] - direct["itl_ms"]["p99"],
        "gateway_cores": cores,
        "streams_per_core": streams / cores if cores else None,
        "tokens_per_s_per_core": gw["output_tokens_per_s"] / cores if cores else None,
        "errors": gw["errors"] + gw["cancelled"],
        "machine_cores": _machine_cores(gw),
        "tokens_per_event": gw.get("tokens_per_event"),
    }
    reasons = []
    if row["errors"]:
        reasons.append(f"{row['errors']} failed requests")
    if not tps >= limits.min_stream_tps:  # NaN (no request completed) fails too
        why = f"{tps:.1f} tok/s per stream < {limits.min_stream_tps:g}"
        if not direct_tps >= limits.min_stream_tps:
            why += f" (direct {direct_tps:.1f} too: this machine cannot feed the level)"
        reasons.append(why)
    if not row["added_itl_p99_ms"] <= limits.max_added_itl_ms:
        reasons.append(f"added ITL p99 {row['added_itl_p99_ms']:+.2f} ms > {limits.max_added_itl_ms:g} ms")
    if not cores:
        reasons.append("no gateway CPU figure")
    row["qualifies"] = not reasons
    row["why_not"] = reasons
    return row


def _machine_cores(figures: dict[str, Any]) -> float | None:
    """The cores the gateway, Triton and the load generator used together during a turn."""
    parts = [figures["gateway_cores"], figures["triton_cores"], figures["generator_cores"]]
    return None if any(p is None for p in parts) else float(sum(parts))


def planning(rows: Sequence[dict[str, Any]], limits: Limits, cpus: int | None) -> dict[str, Any]:
    """The planning figure: the largest streams per gateway core among the qualifying levels; when none
    qualifies, ``None`` and why."""
    ok = [r for r in rows if r["qualifies"]]
    if ok:
        best = max(ok, key=lambda r: r["streams_per_core"])
        text = (
            f"{best['streams_per_core']:.0f} streams per gateway core ({best['streams']} streams on "
            f"{best['gateway_cores']:.2f} cores, gateway {best['gateway']}; {best['tokens_per_s_per_core']:.0f} "
            f"tok/s per core), the largest among the levels with per-stream tok/s >= {limits.min_stream_tps:g} "
            f"and added ITL p99 <= {limits.max_added_itl_ms:g} ms"
        )
        return {"streams_per_core": best["streams_per_core"], "gateway": best["gateway"], **_at(best), "text": text}
    lines = [
        f"no level qualifies (per-stream tok/s >= {limits.min_stream_tps:g} and added ITL p99 <= "
        f"{limits.max_added_itl_ms:g} ms):"
    ]
    lines += [f"  {r['gateway']} at {r['streams']} streams: {'; '.join(r['why_not'])}" for r in rows]
    used = [r["machine_cores"] for r in rows if r["machine_cores"] is not None]
    if used:
        lines.append(
            f"  this machine's {cpus or '?'} cores are shared by Triton, the load generator and the gateway: "
            f"together they used up to {max(used):.2f} cores in a gateway turn"
        )
    return {"streams_per_core": None, "gateway": None, "streams": None, "text": "\n".join(lines)}


def _at(row: dict[str, Any]) -> dict[str, Any]:
    return {"streams": row["streams"], "gateway_cores": row["gateway_cores"]}


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    up = result["upstream"]
    lines = [
        "",
        f"streaming chat, {result['config']['output_tokens']} tokens out, upstream: TTFT {up.get('ttft_ms', '?')} ms "
        f"+ {up.get('ttft_per_stream_ms', '?')} ms per running stream, {up.get('token_delay_ms', '?')} ms per token; "
        f"{result['config']['rounds']} interleaved rounds of {result['config']['seconds']:g}s per target and level; "
        f"{result['cpus']} CPUs",
        f"{'target':<7} {'streams':>7} {'tok/s':>8} {'/stream':>7} {'TTFT p50':>8} {'p99':>7} {'ITL p50':>7} "
        f"{'p99':>7} {'errors':>6} {'gw cores':>8} {'Triton':>6} {'gen':>5}",
    ]
    lines.append("-" * len(lines[-1]))
    for level in result["levels"]:
        for name, r in [*level["gateways"].items(), (DIRECT, level[DIRECT])]:
            lines.append(
                f"{name:<7} {level['streams']:>7} {r['output_tokens_per_s']:>8.0f} "
                f"{_f(r['stream_tokens_per_s_p50']):>7} {_f(r['ttft_ms']['p50']):>8} {_f(r['ttft_ms']['p99']):>7} "
                f"{_f(r['itl_ms']['p50'], 2):>7} {_f(r['itl_ms']['p99'], 2):>7} {r['errors'] + r['cancelled']:>6} "
                f"{_f(r['gateway_cores'], 2):>8} {_f(r['triton_cores'], 2):>6} {_f(r['generator_cores'], 2):>5}"
            )
    lines += [
        "(tok/s: aggregate; /stream: per-request decode rate p50; times in ms; cores: CPU seconds per second, "
        "the gateway's during direct turns is its idle burn)",
        "",
        "gateway vs direct",
        f"{'gateway':<7} {'streams':>7} {'tok/s':>8} {'direct':>8} {'ratio':>6} {'/stream':>7} {'direct':>6} "
        f"{'+TTFT p50':>9} {'+p99':>7} {'+ITL p99':>8} {'cores':>5} {'streams/core':>12} {'tok/s/core':>10} "
        f"{'tok/event':>9} {'qualifies':>9}",
    ]
    lines.append("-" * len(lines[-1]))
    for r in result["rows"]:
        lines.append(
            f"{r['gateway']:<7} {r['streams']:>7} {r['tokens_per_s']:>8.0f} {r['direct_tokens_per_s']:>8.0f} "
            f"{_f(r['tokens_per_s_ratio'], 3):>6} {_f(r['stream_tokens_per_s']):>7} "
            f"{_f(r['direct_stream_tokens_per_s']):>6} {_f(r['ttft_p50_ms'] - r['direct_ttft_p50_ms'], 2):>9} "
            f"{_f(r['ttft_p99_ms'] - r['direct_ttft_p99_ms'], 2):>7} {_f(r['added_itl_p99_ms'], 2):>8} "
            f"{_f(r['gateway_cores'], 2):>5} {_f(r['streams_per_core'], 0):>12} "
            f"{_f(r['tokens_per_s_per_core'], 0):>10} {_f(r.get('tokens_per_event'), 3):>9} "
            f"{'yes' if r['qualifies'] else 'no':>9}"
        )
    lines += ["", "planning figure: " + result["planning"]["text"]]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    streams = [lv["streams"] for lv in levels]
    names = list(levels[0]["gateways"]) if levels else []
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    for k, name in enumerate([*names, DIRECT]):
        figures = [lv["gateways"][name] if name != DIRECT else lv[DIRECT] for lv in levels]
        ax.plot(streams, [f["output_tokens_per_s"] for f in figures], "o-", color=f"C{k}", label=name)
    delay = float(result["upstream"].get("token_delay_ms") or "nan")
    if delay > 0:
        ax.plot(streams, [s * 1000 / delay for s in streams], ":", color="grey", label="every stream at full rate")
    ax.set(title="aggregate output tok/s", xlabel="streams", ylabel="tok/s")
    ax = axes[0][1]
    for k, name in enumerate([*names, DIRECT]):
        figures = [lv["gateways"][name] if name != DIRECT else lv[DIRECT] for lv in levels]
        ax.plot(streams, [f["ttft_ms"]["p50"] for f in figures], "o-", color=f"C{k}", label=f"{name} p50")
        ax.plot(streams, [f["ttft_ms"]["p99"] for f in figures], "x--", color=f"C{k}", label=f"{name} p99")
    ax.set(title="TTFT", xlabel="streams", ylabel="ms")
    ax = axes[1][0]
    for k, name in enumerate(names):
        mine = [r for r in result["rows"] if r["gateway"] == name]
        ax.plot([r["streams"] for r in mine], [r["added_itl_p99_ms"] for r in mine], "o-", color=f"C{k}", label=name)
    ax.axhline(result["limits"]["max_added_itl_ms"], color="tab:red", linestyle="--", label="limit")
    ax.set(title="ITL p99 the gateway adds (gateway - direct)", xlabel="streams", ylabel="ms")
    ax = axes[1][1]
    for k, name in enumerate(names):
        mine = [r for r in result["rows"] if r["gateway"] == name]
        xs = [r["streams"] for r in mine]
        ax.plot(xs, [r["streams_per_core"] or math.nan for r in mine], "o-", color=f"C{k}", label=name)
        good = [r for r in mine if r["qualifies"]]
        ax.plot([r["streams"] for r in good], [r["streams_per_core"] for r in good], "s", color=f"C{k}", ms=11,
                fillstyle="none", label=f"{name}: qualifies")  # fmt: skip
    ax.set(title="streams per gateway core", xlabel="streams", ylabel="streams / core")
    for row in axes:
        for a in row:
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    fig.suptitle("gateway capacity: synthetic upstream playing TensorRT-LLM, 8B model on an H100")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the load ---


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str
    url: str
    pid: int  # 0: unknown


class Watch:
    """The processes whose CPU a turn reads: one gateway's (when the turn is its), Triton's, and this one."""

    def __init__(self, gateway_pid: int, stack_pid: int) -> None:
        table = process_table()
        self.gateway = gateway_processes(table, gateway_pid) if gateway_pid else []
        triton = find_child(table, stack_pid) if stack_pid in table else None
        self.triton = descendants(table, triton) if triton else []

    def read(self) -> tuple[float, float | None, float | None, float]:
        """(time, gateway CPU s, Triton CPU s, this process's CPU s)."""
        gateway = sum(process_cpu_seconds(p) for p in self.gateway) if self.gateway else None
        triton = sum(process_cpu_seconds(p) for p in self.triton) if self.triton else None
        return time.monotonic(), gateway, triton, time.process_time()


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


async def run_turn(
    send: Callable[[], Awaitable[RequestRecord]], streams: int, warmup: float, seconds: float, watch: Watch
) -> Turn:
    """``streams`` requests in flight (closed loop), started over ``warmup`` s; the next ``seconds`` are
    measured, and the streams go on until every request started in them has ended."""
    begin = time.monotonic()
    start, end = begin + warmup, begin + warmup + seconds
    every: list[RequestRecord] = []
    turn = Turn()
    counted_in_flight = 0

    async def at(when: float) -> tuple[float, float | None, float | None, float]:
        await asyncio.sleep(max(0.0, when - time.monotonic()))
        return watch.read()

    async def worker(i: int) -> None:
        nonlocal counted_in_flight
        await asyncio.sleep(warmup * i / streams)
        while True:
            now = time.monotonic()
            if now >= end and counted_in_flight == 0:
                return
            counted = start <= now < end
            counted_in_flight += counted
            try:
                record = await send()
            finally:
                counted_in_flight -= counted
            every.append(record)
            if counted:
                turn.records.append(record)
            if not record.ok:
                await asyncio.sleep(0.05)  # a failing target: no busy loop

    marks = asyncio.gather(at(start), at(end))
    await asyncio.gather(*(worker(i) for i in range(streams)))
    (t0, gw0, tr0, gen0), (t1, gw1, tr1, gen1) = await marks
    turn.window_s = t1 - t0
    turn.tokens = window_tokens(every, t0, t1)
    turn.gateway_cpu_s, turn.triton_cpu_s = _minus(gw1, gw0), _minus(tr1, tr0)
    turn.generator_cpu_s = gen1 - gen0
    return turn


async def measure(args: argparse.Namespace, gateways: list[Gateway], stack_pid: int) -> dict[str, Any]:
    w = workload(Tokenizer(args.tokenizer_dir), args.input_tokens, args.output_tokens)
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=args.request_timeout)
    )
    channel = grpc.aio.insecure_channel(args.triton)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = targets.direct_request(args.triton_model, w)
    sends: dict[str, Callable[[], Awaitable[RequestRecord]]] = {
        g.name: partial(targets.gateway_chat, http, g.url, args.model, w) for g in gateways
    }
    sends[DIRECT] = partial(targets.triton_direct, stub, request, w)
    pids = {g.name: g.pid for g in gateways}
    turns: dict[tuple[int, str], list[Turn]] = {}
    try:
        _say(f"the prompt is {len(w.chat_ids)} tokens with the chat template; targets: {', '.join(sends)}")
        for send in sends.values():  # warm-up (connections, first requests), not counted
            await run_turn(send, min(args.streams), 0.0, 1.0, Watch(0, 0))
        for streams in args.streams:
            for rnd in range(args.rounds):
                order = list(sends) if rnd % 2 == 0 else list(sends)[::-1]
                for name in order:
                    # a gateway's turn reads its own CPU; direct's, the first gateway's idle burn
                    watch = Watch(pids.get(name, gateways[0].pid), stack_pid)
                    turn = await run_turn(sends[name], streams, args.warmup, args.seconds, watch)
                    turns.setdefault((streams, name), []).append(turn)
                    _say(_progress(streams, rnd, args.rounds, name, turn))
    finally:
        await http.close()
        await channel.close()
    limits = Limits(args.min_stream_tps, args.max_added_itl_ms)
    levels, rows = [], []
    for streams in args.streams:
        direct = pooled(turns[(streams, DIRECT)])
        level: dict[str, Any] = {"streams": streams, DIRECT: direct, "gateways": {}}
        for g in gateways:
            figures = pooled(turns[(streams, g.name)])
            level["gateways"][g.name] = figures
            rows.append(compare(g.name, streams, figures, direct, limits))
        levels.append(level)
    return {
        "prompt_tokens": len(w.chat_ids),
        "limits": {"min_stream_tps": limits.min_stream_tps, "max_added_itl_ms": limits.max_added_itl_ms},
        "levels": levels,
        "rows": rows,
        "planning": planning(rows, limits, os.cpu_count()),
    }


def _progress(streams: int, rnd: int, rounds: int, name: str, turn: Turn) -> str:
    ok = [r for r in turn.records if r.ok]
    rate = sorted(r.tokens_per_s for r in ok)
    cpu = f", gateway {turn.gateway_cpu_s / turn.window_s:.2f} cores" if turn.gateway_cpu_s is not None else ""
    return (
        f"{streams} streams round {rnd + 1}/{rounds} {name:<6} {turn.tokens / turn.window_s:7.0f} tok/s, "
        f"{len(ok)}/{len(turn.records)} requests ok, per-stream p50 "
        f"{rate[len(rate) // 2] if rate else math.nan:.1f} tok/s{cpu}"
    )


# --- the stack ---


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def model_repository(source: Path, parameters: dict[str, str]) -> Iterator[Path]:
    """A temporary model repository: ``source``'s models linked, but ``synthetic`` with its config's
    ``parameters`` set."""
    root = Path(tempfile.mkdtemp(prefix="capacity-models-"))
    try:
        for entry in source.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.name != SYNTHETIC:
                (root / entry.name).symlink_to(entry.resolve())
                continue
            mine = root / SYNTHETIC
            mine.mkdir()
            for part in entry.iterdir():
                if part.name != "config.pbtxt":
                    (mine / part.name).symlink_to(part.resolve())
            (mine / "config.pbtxt").write_text(synthetic_config((entry / "config.pbtxt").read_text(), parameters))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _upstream(args: argparse.Namespace) -> dict[str, str]:
    return {
        "ttft_ms": f"{args.ttft_ms:g}",
        "ttft_per_stream_ms": f"{args.ttft_per_stream_ms:g}",
        "token_delay_ms": f"{args.token_delay_ms:g}",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = args.out / "capacity_stack.log"
    with ExitStack() as stack:
        if args.launch:
            repo = stack.enter_context(model_repository(REPO_ROOT / "model_repository", _upstream(args)))
            stack.enter_context(_environ({"GATEWAY_MODEL_REPOSITORY": str(repo)}))
        target = stack.enter_context(stack_or_running(args.launch, args.gateway, args.triton, args.gateway_pid, log))
        args.triton = target.triton
        if not args.launch:
            if not target.pid:
                _say("the gateway's pid is unknown (pass --gateway-pid): no gateway CPU figures")
            return run_loop(measure(args, [Gateway("gateway", target.gateway, target.pid)], target.pid))
        launches = [(f"w{workers}", {"GATEWAY_WORKERS": str(workers)}) for workers in args.workers]
        launches += [(f"w1@{name}", {"GATEWAY_WORKERS": "1", **env}) for name, env in args.compare]
        gateways = []
        for name, env in launches:
            log = args.out / f"capacity_gateway_{name}.log"
            extra: Stack = launch_gateway(target.triton, args.model, args.triton_model, env, log)
            stack.callback(extra.stop)
            gateways.append(Gateway(name, extra.gateway, extra.pid))
        time.sleep(1.0)  # every worker up (the first answers /ready)
        return run_loop(measure(args, gateways, target.pid))
    raise AssertionError("unreachable")


# --- command line ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.capacity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--launch", action="store_true", help="start the stack and the gateways on free ports")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="a running gateway (without --launch)")
    parser.add_argument("--triton", default="127.0.0.1:8001", help="its Triton's gRPC HOST:PORT (without --launch)")
    parser.add_argument("--gateway-pid", type=int, default=0, help="default: who listens on the gateway's port")
    parser.add_argument("--model", default=SYNTHETIC, help="model id at the gateway")
    parser.add_argument("--triton-model", default=SYNTHETIC)
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO_ROOT / "model_repository" / "smollm2" / "weights")
    parser.add_argument("--workers", type=positive_ints, default=[1, 2], help="with --launch: one gateway per count")
    parser.add_argument("--streams", type=positive_ints, default=[10, 25, 50, 100], help="closed-loop levels")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per turn")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds over which a turn's streams start")
    parser.add_argument("--rounds", type=int, default=2, help="turns each target takes per level, interleaved")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--ttft-ms", type=float, default=10.0, help="with --launch: the synthetic TTFT alone")
    parser.add_argument("--ttft-per-stream-ms", type=float, default=1.1, help="with --launch: + per running stream")
    parser.add_argument("--token-delay-ms", type=float, default=10.0, help="with --launch: between tokens")
    parser.add_argument("--min-stream-tps", type=float, default=95.0, help="a qualifying level's per-stream tok/s")
    parser.add_argument("--max-added-itl-ms", type=float, default=2.0, help="a qualifying level's added ITL p99")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="with --launch: one more 1-worker gateway with these environment variables, measured as w1@NAME "
        "(e.g. percall:GATEWAY_TRITON_STREAMS=0)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    args.compare = [parse_compare(spec, parser) for spec in args.compare]
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0 or args.output_tokens < 2:
        parser.error("--rounds must be >= 1, --seconds > 0, --warmup >= 0, --output-tokens >= 2")
    return args


def _say(line: str) -> None:
    print(f"[capacity] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = run(args)
    figures["upstream"] = _upstream(args) if args.launch else {}
    _, wrote = save_results(args, "capacity", figures, started, plot, format_table)
    print(wrote)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
