"""Load generator: the gateway (chat, completions) against Triton direct, side by side in one run.

Closed loop (``--concurrency 1,8,32,64``: that many requests always in flight), bursts
(``--concurrency 8,32 --mode burst``: 2 x the concurrency fired at the same instant, the next burst
once all of them have finished; ``--mode closed,burst`` runs both), or open loop (``--rate 5,20``:
Poisson arrivals, requests/s). At each load level the targets (and modes) take turns for
``--rounds`` rounds, so every gateway/direct comparison comes from the same minutes of the same
machine. Warm-up requests are not counted. ``--processes N`` splits the load over N generator
processes when one core cannot keep up; the generator's own CPU per token is always reported.

    python -m perf.bench --launch                       # start the stack itself (synthetic model)
    python -m perf.bench --gateway http://HOST:8080 --triton HOST:8001 --model M --triton-model T
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import csv
import json
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
from tritonclient.grpc import service_pb2_grpc

from gateway.config import REPO_ROOT
from gateway.text.tokenizer import Tokenizer
from perf import targets
from perf.metrics import SLO, RequestRecord, summarize
from perf.report import goal_checks, plot_all, print_table
from perf.stack import (
    Stack,
    floor_server,
    launch_gateway,
    launch_stack,
    parse_compare,
    process_cpu_seconds,
    wake_cost_us,
)

TARGETS = ("gateway-chat", "gateway-completions", "gateway-grpc", "direct")
FLOOR = "floor"  # --floor: perf/floor.py, the transport floor, measured as gateway-chat@floor
# --mode: how the concurrency levels are loaded; the results' "mode" ("concurrency" for the closed loop, as
# before bursts existed, so older JSON reads the same)
MODES = {"closed": "concurrency", "burst": "burst"}
BURST_FACTOR = 2  # a burst at concurrency C fires 2 x C requests at once (issue 13's measurement)
T = TypeVar("T")
FILLER = "The lighthouse keeper watched the grey sea roll in under a heavy sky, counting the ships. "


def workload(tokenizer: Tokenizer, input_tokens: int, output_tokens: int) -> targets.Workload:
    words = tokenizer.encode(FILLER * (input_tokens // 10 + 2))
    prompt_ids = words[:input_tokens]
    text = tokenizer.decode(prompt_ids)
    messages = [{"role": "user", "content": text}]
    chat_ids = tokenizer.encode(tokenizer.apply_chat_template(messages))
    return targets.Workload(messages, chat_ids, prompt_ids, output_tokens)


async def _one(target: str, cfg: dict[str, Any], w: targets.Workload, clients: dict[str, Any]) -> RequestRecord:
    kind, _, variant = target.partition("@")  # "gateway-chat@stock": the gateway launched as "stock"
    base = cfg["gateways"][variant]["url"]
    if kind == "gateway-chat":
        record = await targets.gateway_chat(clients["http"], base, cfg["model"], w)
    elif kind == "gateway-completions":
        record = await targets.gateway_completions(clients["http"], base, cfg["model"], w)
    elif kind == "gateway-grpc":
        record = await targets.gateway_grpc(clients["api@" + variant], cfg["model"], w)
    else:
        return await targets.triton_direct(clients["triton"], clients["direct_request"], w)
    record.target = target
    return record


# Each generator process keeps one event loop and its clients across phases, so connections made
# during warm-up are reused and no measured request pays for a TCP or HTTP/2 handshake.
_LOOP: asyncio.AbstractEventLoop | None = None
_CLIENTS: dict[str, Any] = {}


async def _clients(cfg: dict[str, Any], w: targets.Workload) -> dict[str, Any]:
    if "http" not in _CLIENTS:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=cfg["request_timeout"])
        _CLIENTS["http"] = aiohttp.ClientSession(connector=connector, timeout=timeout)
        channel = grpc.aio.insecure_channel(cfg["triton"])
        _CLIENTS["channels"] = [channel]
        _CLIENTS["triton"] = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for variant, gateway in cfg["gateways"].items():
            if gateway["grpc"]:
                from gateway.grpcapi.stubs import pb_grpc

                channel = grpc.aio.insecure_channel(gateway["grpc"])
                _CLIENTS["channels"].append(channel)
                _CLIENTS["api@" + variant] = pb_grpc.LLMGatewayStub(channel)  # type: ignore[no-untyped-call]
    if "direct_request" not in _CLIENTS:
        _CLIENTS["direct_request"] = targets.direct_request(cfg["triton_model"], w)
    return _CLIENTS


async def fire_bursts(one: Callable[[], Awaitable[T]], requests: int, size: int) -> list[T]:
    """``requests`` calls of ``one`` in bursts of ``size`` started together; a burst starts once the
    previous one has ended, whole (the last one is smaller when ``size`` does not divide ``requests``)."""
    out: list[T] = []
    while len(out) < requests:
        n = min(max(1, size), requests - len(out))
        out.extend(await asyncio.gather(*(one() for _ in range(n))))
    return out


async def _phase(
    target: str,
    cfg: dict[str, Any],
    w: targets.Workload,
    requests: int,
    concurrency: int,
    rate: float,
    burst: int = 0,
) -> list[RequestRecord]:
    clients = await _clients(cfg, w)
    if burst > 0:  # bursts: `burst` requests at the same instant, then wait for all of them
        return await fire_bursts(lambda: _one(target, cfg, w, clients), requests, burst)
    if rate > 0:  # open loop: Poisson arrivals
        rng = random.Random(cfg["seed"])
        tasks = []
        for _ in range(requests):
            tasks.append(asyncio.create_task(_one(target, cfg, w, clients)))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))
    records: list[RequestRecord] = []  # closed loop: `concurrency` requests always in flight
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            records.append(await _one(target, cfg, w, clients))

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return records


async def _close_clients() -> None:
    if "http" in _CLIENTS:
        await _CLIENTS.pop("http").close()
    for channel in _CLIENTS.pop("channels", []):
        await channel.close()


def _shutdown() -> None:
    if _LOOP is not None:
        _LOOP.run_until_complete(_close_clients())


def _run_phase(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a generator process: one target's share of one phase."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        atexit.register(_shutdown)
    cpu0 = time.process_time()
    records = _LOOP.run_until_complete(
        _phase(
            job["target"],
            job["cfg"],
            job["workload"],
            job["requests"],
            job["concurrency"],
            job["rate"],
            job["burst"],
        )
    )
    return {"records": records, "cpu_s": time.process_time() - cpu0}


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def burst_shares(requests: int, concurrency: int, parts: int) -> list[tuple[int, int, int]]:
    """(requests, concurrency, burst size) per generator process, ``requests`` rounded up to whole bursts.
    Each process fires its share of every burst (2 x its share of the concurrency), as many bursts as the
    others, so together they fire 2 x ``concurrency`` at once."""
    concurrency = max(1, concurrency)
    bursts = math.ceil(requests / (BURST_FACTOR * concurrency))
    return [(bursts * BURST_FACTOR * c, c, BURST_FACTOR * c) for c in _split(concurrency, parts) if c > 0]


def run_level(
    pool: ProcessPoolExecutor,
    target: str,
    cfg: dict[str, Any],
    w: targets.Workload,
    requests: int,
    concurrency: int,
    rate: float,
    burst: bool = False,
) -> tuple[list[RequestRecord], float, float]:
    parts = min(cfg["processes"], max(1, concurrency if rate == 0 else requests))
    base = {"target": target, "cfg": cfg, "workload": w, "rate": rate / parts}
    if burst:
        shares = burst_shares(requests, concurrency, parts)
    else:
        shares = [(n, c, 0) for n, c in zip(_split(requests, parts), _split(concurrency, parts), strict=True)]
    jobs = [{**base, "requests": n, "concurrency": c, "burst": size} for n, c, size in shares if n > 0]
    start = time.monotonic()
    results = list(pool.map(_run_phase, jobs))
    window = time.monotonic() - start
    records = [r for res in results for r in res["records"]]
    return records, window, sum(res["cpu_s"] for res in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launch", action="store_true", help="start `python -m gateway serve` on free ports")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--triton", default="127.0.0.1:8001")
    parser.add_argument("--gateway-grpc", default="127.0.0.1:50051", help="the gateway's gRPC API ('' to skip)")
    parser.add_argument("--gateway-pid", type=int, default=0, help="to report the gateway's CPU per token")
    parser.add_argument("--model", default="synthetic", help="OpenAI model id at the gateway")
    parser.add_argument("--triton-model", default="synthetic")
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO_ROOT / "model_repository" / "smollm2" / "weights")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--concurrency", default="1,8,32,64", help="closed-loop levels")
    parser.add_argument(
        "--mode",
        default="closed",
        help="how --concurrency C loads: closed (C in flight), burst (2 x C fired at once, all awaited), "
        "or both, comma-separated, interleaved",
    )
    parser.add_argument("--rate", default="", help="open-loop request rates (req/s); replaces --concurrency")
    parser.add_argument(
        "--requests",
        type=int,
        default=0,
        help="per target, level, mode and round (default 4 x level, >= 16; bursts: rounded up to whole bursts)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="turns each target takes per level, interleaved")
    parser.add_argument("--warmup", type=int, default=4, help="uncounted requests per target before each level")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--slo-ttft-ms", type=float, default=200.0)
    parser.add_argument("--slo-tpot-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="with --launch: one more gateway on the same Triton, with these environment variables; its "
        "targets are measured as TARGET@NAME, interleaved with the others (before/after in one run)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure the transport floor (perf/floor.py: aiohttp in, shared grpc.aio streams out, nothing "
        "else) as gateway-chat@floor",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args()
    if args.compare and not args.launch:
        parser.error("--compare needs --launch")
    args.modes = parse_modes(args.mode, parser)
    if args.rate and args.mode != "closed":
        parser.error("--mode applies to --concurrency; --rate is the open loop")
    compare = [parse_compare(spec, parser) for spec in args.compare]

    stacks: list[Stack] = []
    try:
        if args.launch:
            stack = launch_stack()
            stacks.append(stack)
            args.gateway, args.triton, args.gateway_pid = stack.gateway, stack.triton, stack.pid
            args.gateway_grpc = stack.grpc
        args.gateways = {"": {"url": args.gateway, "grpc": args.gateway_grpc, "pid": args.gateway_pid}}
        for name, env in compare:
            log = args.out / f"gateway@{name}.log"
            extra = launch_gateway(args.triton, args.model, args.triton_model, env, log)
            stacks.append(extra)
            args.gateways[name] = {"url": extra.gateway, "grpc": extra.grpc, "pid": extra.pid, "env": env}
        return _bench(args)
    finally:
        for stack in reversed(stacks):
            stack.stop()


def parse_modes(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """``closed,burst`` -> the results' mode names, ["concurrency", "burst"]."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names or any(m not in MODES for m in names) or len(set(names)) != len(names):
        parser.error(f"--mode {text!r}: expected closed, burst or closed,burst")
    return [MODES[m] for m in names]


def _bench(args: argparse.Namespace) -> int:
    wake_us = wake_cost_us()
    print(f"[bench] one wake-up of an idle process costs {wake_us:.0f} µs of CPU here", file=sys.stderr, flush=True)
    tokenizer = Tokenizer(args.tokenizer_dir)
    w = workload(tokenizer, args.input_tokens, args.output_tokens)
    with ExitStack() as stack:
        if args.floor:  # the transport floor, as one more gateway that serves gateway-chat
            log = args.out / f"gateway@{FLOOR}.log"
            floor = floor_server(args.triton, args.triton_model, w.chat_ids, w.output_tokens, log)
            url, pid = stack.enter_context(floor)
            args.gateways[FLOOR] = {"url": url, "grpc": "", "pid": pid}
        return _measure(args, w, wake_us)


def _measure(args: argparse.Namespace, w: targets.Workload, wake_us: float) -> int:
    cfg = {
        k: getattr(args, k)
        for k in ("gateways", "triton", "model", "triton_model", "request_timeout", "seed", "processes")
    }
    slo = SLO(args.slo_ttft_ms, args.slo_tpot_ms)
    chosen = []
    for variant, gateway in args.gateways.items():
        suffix = f"@{variant}" if variant else ""
        for t in args.targets.split(","):
            if (
                t.startswith("gateway-")
                and (t != "gateway-grpc" or gateway["grpc"])
                and (variant != FLOOR or t == "gateway-chat")
            ):
                chosen.append(t + suffix)
    if "direct" in args.targets.split(","):
        chosen.append("direct")
    open_loop = bool(args.rate)
    levels = [float(x) for x in args.rate.split(",")] if open_loop else [int(x) for x in args.concurrency.split(",")]
    modes = ["rate"] if open_loop else args.modes
    all_records: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.processes, mp_context=ctx) as pool:
        for level in levels:
            concurrency = 0 if open_loop else int(level)
            rate = float(level) if open_loop else 0.0
            requests = args.requests or max(16, 4 * int(level))
            cells = [(mode, t) for mode in modes for t in chosen]
            per_cell: dict[tuple[str, str], list[RequestRecord]] = {c: [] for c in cells}
            windows = dict.fromkeys(cells, 0.0)
            cpu = {c: {"generator_s": 0.0, "gateway_s": 0.0} for c in cells}
            # warm-up, not counted; at a concurrency level, with as many requests in flight as the level's
            # peak, so that no measured request opens an HTTP connection
            peak = concurrency * (BURST_FACTOR if "burst" in modes else 1)
            for target in chosen if args.warmup > 0 else []:
                if open_loop:
                    run_level(pool, target, cfg, w, args.warmup, 1, rate)
                else:
                    run_level(pool, target, cfg, w, max(args.warmup, peak), peak, 0.0)
            for rnd in range(args.rounds):
                for cell in cells:
                    mode, target = cell
                    # the gateway that serves the target; for direct, what the idle default gateway burns
                    pid = args.gateways[target.partition("@")[2]]["pid"]
                    gw0 = process_cpu_seconds(pid)
                    records, window, gen_cpu = run_level(
                        pool, target, cfg, w, requests, concurrency, rate, burst=mode == "burst"
                    )
                    cpu[cell]["gateway_s"] += process_cpu_seconds(pid) - gw0
                    cpu[cell]["generator_s"] += gen_cpu
                    per_cell[cell].extend(records)
                    windows[cell] += window
                    ok = sum(r.ok for r in records)
                    print(
                        f"[bench] {mode} {level:g} round {rnd + 1}/{args.rounds} "
                        f"{target:<20} {ok}/{len(records)} ok in {window:5.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
            for cell in cells:
                mode, target = cell
                summary = summarize(per_cell[cell], windows[cell], slo)
                tokens = max(1, summary["output_tokens"])
                summary["cpu"] = {
                    "generator_us_per_token": cpu[cell]["generator_s"] / tokens * 1e6,
                    "generator_cores": cpu[cell]["generator_s"] / max(windows[cell], 1e-9),
                    "gateway_us_per_token": cpu[cell]["gateway_s"] / tokens * 1e6 if args.gateway_pid else None,
                    "gateway_tokens_per_core_s": tokens / cpu[cell]["gateway_s"]
                    if args.gateway_pid and cpu[cell]["gateway_s"] > 0 and target != "direct"
                    else None,
                }
                results.append({"level": level, "mode": mode, "target": target, **summary})
                all_records.extend({"level": level, "mode": mode, **r.row()} for r in per_cell[cell])
    _write(args, results, all_records, {"idle_wake_cpu_us": wake_us})
    return 0


def _write(
    args: argparse.Namespace, results: list[dict[str, Any]], rows: list[dict[str, Any]], machine: dict[str, float]
) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base = args.out / f"bench_{stamp}"
    config = {k: str(v) for k, v in vars(args).items()}
    goals = goal_checks(results)
    Path(f"{base}.json").write_text(
        json.dumps({"config": config, "machine": machine, "results": results, "goals": goals}, indent=2, default=str)
    )
    with open(f"{base}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["level"])
        writer.writeheader()
        writer.writerows(rows)
    pngs = plot_all(results, rows, base)
    print_table(results, machine["idle_wake_cpu_us"])
    print(f"\nwrote {base}.json, {base}.csv, " + ", ".join(str(p) for p in pngs))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
