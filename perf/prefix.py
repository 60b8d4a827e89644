"""Prefix-aware routing against least-in-flight: the TTFT a shared-prefix chat workload gains (issue 16).

Two embedded tritonservers serve the ``synthetic`` model with its prefix cache on (a temporary copy of
model_repository/, the other models linked): TTFT is ``--ttft-ms`` + ``--prefill-us`` per prompt token
past the longest cached prefix of whole ``--block-tokens`` blocks, each server holding an LRU of
``--cache-blocks`` blocks: room for about 2/3 of the system prompts, so the two servers' caches
together hold them all only if each prompt keeps to one server. One gateway (``python -m gateway
serve --config``, a process of its own) serves them as one model with ``triton_urls``, routing
``least_in_flight`` in one phase and ``prefix`` in the other.

The workload: ``--prompts`` long system prompts (``--system-tokens`` each, distinct from their first
token), each request one of them at random with a short user turn of its own, streamed, exactly
``--output-tokens`` tokens out. At each ``--concurrency`` level (a closed loop) the two routings take
turns for ``--rounds`` rounds (the order alternating); every phase restarts both tritonservers and the
gateway, so caches and the prefix table start cold, then runs ``--warmup`` seconds unmeasured and
measures the requests started in the next ``--seconds``.

Reported per level and routing: TTFT p50/p90/p99 (client-side, to the first content), requests/s,
errors, how the requests split between the two servers (the gateway's
``gateway_upstream_requests_total``), and the share of prompt tokens the servers found cached (their
logs, warm-up included); and per level the gain, least-in-flight TTFT / prefix TTFT at p50 and p99.

    python -m perf.prefix [--concurrency 4,16] [--seconds 20] [--rounds 1] [--prompts 12]

Progress on stderr; writes perf/results/prefix.json and perf/results/prefix.png, and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import REPO_ROOT
from gateway.embedded.tritonserver import TritonPorts, TritonServer
from gateway.text.tokenizer import Tokenizer
from perf import targets
from perf.capacity import model_repository
from perf.metrics import RequestRecord, summarize
from perf.stack import free_port, positive_ints, run_loop, save_results

ROUTINGS = ("least_in_flight", "prefix")
MODEL = "synthetic"
TOKENIZER = REPO_ROOT / "model_repository" / "smollm2" / "weights"
WORDS = [
    *("ledger", "invoice", "clause", "tenant", "warranty", "shipment", "audit", "quorum", "escrow", "tariff"),
    *("clerk", "docket", "parcel", "mandate", "appendix", "register", "statute", "deposit", "customs", "broker"),
]
_CACHE_LINE = re.compile(r"prefix cache: (\d+) requests, (\d+) of (\d+) prompt tokens cached")

# --- the workload ---


def system_prompts(tokenizer: Tokenizer, n: int, tokens: int, seed: int = 7) -> list[str]:
    """``n`` distinct system prompts of about ``tokens`` tokens, each different from its first token."""
    rng = random.Random(seed)
    prompts = []
    for k in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(tokens))
        ids = tokenizer.encode(f"Desk {k} handbook. {words}")[:tokens]
        prompts.append(tokenizer.decode(ids))
    return prompts


def workloads(prompts: list[str], turns: int, output_tokens: int, seed: int = 11) -> list[list[targets.Workload]]:
    """Per system prompt, ``turns`` requests each with a short user turn of its own."""
    rng = random.Random(seed)
    out = []
    for system in prompts:
        out.append(
            [
                targets.Workload(
                    [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"Question {rng.randrange(10**6)}: which {rng.choice(WORDS)}?"},
                    ],
                    [],
                    [],
                    output_tokens,
                )
                for _ in range(turns)
            ]
        )
    return out


# --- the stack ---


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: a drain of nothing
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def gateway_config(urls: list[str], routing: str, block_tokens: int) -> str:
    quoted = ", ".join(f'"{u}"' for u in urls)
    return (
        "health_check_interval = 1.0\n\n[[models]]\n"
        f'id = "{MODEL}"\ntriton_model = "{MODEL}"\ntokenizer_dir = "{TOKENIZER}"\n'
        f'triton_urls = [{quoted}]\nrouting = "{routing}"\nprefix_block_tokens = {block_tokens}\n'
    )


def launch_gateway(config: Path, log: Path, timeout: float = 120.0) -> Gateway:
    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), "--no-grpc", "-q"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as resp:
                if resp.status == 200:
                    return Gateway(url, proc)
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the gateway was not ready after {timeout}s; see {log}")


@contextmanager
def tritons(repository: Path, work: Path) -> Iterator[list[TritonServer]]:
    servers = [
        TritonServer(
            repository, work / f"triton-{k}", TritonPorts(free_port(), free_port(), free_port()), models=(MODEL,)
        )
        for k in range(2)
    ]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def log_size(server: TritonServer) -> int:
    try:
        return server.log_path.stat().st_size
    except OSError:
        return 0


def cache_figures(server: TritonServer, offset: int) -> tuple[int, int, int] | None:
    """(requests, cached prompt tokens, prompt tokens) from the line its model logs when unloaded."""
    try:
        with open(server.log_path, "rb") as f:
            f.seek(offset)
            found = _CACHE_LINE.findall(f.read().decode(errors="replace"))
    except OSError:
        return None
    if not found:
        return None
    requests, cached, total = found[-1]
    return int(requests), int(cached), int(total)


async def upstream_split(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Requests per upstream so far (gateway_upstream_requests_total of the model)."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    split: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gateway_upstream_requests_total{") and f'model="{MODEL}"' in line:
            upstream = re.search(r'upstream="([^"]+)"', line)
            if upstream:
                split[upstream.group(1)] = float(line.rsplit(" ", 1)[1])
    return split


# --- the load ---


async def closed_loop(
    url: str, work: list[list[targets.Workload]], concurrency: int, warmup: float, seconds: float, seed: int
) -> tuple[list[RequestRecord], float, dict[str, float]]:
    """``concurrency`` requests always in flight, each a random prompt's next user turn; the requests
    started in the ``seconds`` after ``warmup`` are kept. Returns them, the window and the split."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120))
    begin = time.monotonic()
    start, end = begin + warmup, begin + warmup + seconds
    kept: list[RequestRecord] = []
    send = partial(targets.gateway_chat, session, url, MODEL)

    async def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        await asyncio.sleep(min(warmup, 1.0) * i / concurrency)
        while (now := time.monotonic()) < end:
            turns = work[rng.randrange(len(work))]
            record = await send(turns[rng.randrange(len(turns))])
            if start <= now:
                kept.append(record)
            if not record.ok:
                await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        split = await upstream_split(session, url)
    finally:
        await session.close()
    return kept, seconds, split


def phase(
    args: argparse.Namespace,
    servers: list[TritonServer],
    work: list[list[targets.Workload]],
    routing: str,
    concurrency: int,
    seed: int,
) -> dict[str, Any]:
    """One routing at one level, from cold: tritonservers and gateway started, loaded, stopped."""
    offsets = []
    for server in servers:
        offsets.append(log_size(server))
        server.start()
    for server in servers:
        server.wait_ready(timeout=180)
    config = args.out / "prefix_gateway.toml"
    config.write_text(gateway_config([s.grpc_url for s in servers], routing, args.block_tokens))
    gateway = launch_gateway(config, args.out / "prefix_gateway.log")
    try:
        records, window, split = run_loop(closed_loop(gateway.url, work, concurrency, args.warmup, args.seconds, seed))
    finally:
        gateway.stop()
        for server in servers:
            server.stop()
    figures = summarize(records, window)
    caches = [cache_figures(s, o) for s, o in zip(servers, offsets, strict=True)]
    known = [c for c in caches if c is not None]
    figures["cached_share"] = sum(c[1] for c in known) / sum(c[2] for c in known) if known else None
    figures["split"] = [split.get(s.grpc_url, 0.0) for s in servers]
    return figures


def gains(lif: dict[str, Any], prefix: dict[str, Any]) -> dict[str, float]:
    """least-in-flight / prefix, for each TTFT statistic (> 1: prefix is faster)."""
    out = {}
    for stat in ("p50", "p90", "p99", "mean"):
        a, b = lif["ttft_ms"][stat], prefix["ttft_ms"][stat]
        out[stat] = a / b if b > 0 else math.nan
    return out


def pooled(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """One routing at one level over its rounds: the phase with the median TTFT p50, and every round's p50/p99."""
    ordered = sorted(phases, key=lambda f: f["ttft_ms"]["p50"])
    middle = dict(ordered[len(ordered) // 2])
    middle["rounds_ttft_ms"] = [{"p50": f["ttft_ms"]["p50"], "p99": f["ttft_ms"]["p99"]} for f in phases]
    return middle


def measure(args: argparse.Namespace) -> dict[str, Any]:
    tokenizer = Tokenizer(TOKENIZER)
    prompts = system_prompts(tokenizer, args.prompts, args.system_tokens)
    work = workloads(prompts, args.turns, args.output_tokens)
    sample = tokenizer.encode(tokenizer.apply_chat_template(work[0][0].messages))
    _say(f"{args.prompts} system prompts; a request's prompt is {len(sample)} tokens with the chat template")
    parameters = {
        "ttft_ms": f"{args.ttft_ms:g}",
        "token_delay_ms": f"{args.token_delay_ms:g}",
        "prefill_us_per_token": f"{args.prefill_us:g}",
        "prefix_block_tokens": str(args.block_tokens),
        "prefix_cache_blocks": str(args.cache_blocks),
    }
    work_dir = Path(tempfile.mkdtemp(prefix="prefix-bench-"))
    results: dict[tuple[int, str], list[dict[str, Any]]] = {}
    try:
        with (
            model_repository(REPO_ROOT / "model_repository", parameters) as repository,
            tritons(repository, work_dir) as servers,
        ):
            for concurrency in args.concurrency:
                for rnd in range(args.rounds):
                    order = ROUTINGS if rnd % 2 == 0 else ROUTINGS[::-1]
                    for routing in order:
                        figures = phase(args, servers, work, routing, concurrency, seed=rnd)
                        results.setdefault((concurrency, routing), []).append(figures)
                        _say(_progress(concurrency, rnd, args.rounds, routing, figures))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    levels = []
    for concurrency in args.concurrency:
        lif, prefix = (pooled(results[(concurrency, r)]) for r in ROUTINGS)
        gain = gains(lif, prefix)
        levels.append({"concurrency": concurrency, "least_in_flight": lif, "prefix": prefix, "gain": gain})
    return {"prompt_tokens": len(sample), "upstream": parameters, "levels": levels}


def _progress(concurrency: int, rnd: int, rounds: int, routing: str, f: dict[str, Any]) -> str:
    share = f"{f['cached_share'] * 100:.0f}%" if f["cached_share"] is not None else "?"
    return (
        f"{concurrency} streams round {rnd + 1}/{rounds} {routing:<15} TTFT p50 {f['ttft_ms']['p50']:.0f} ms "
        f"p99 {f['ttft_ms']['p99']:.0f} ms, {f['completed']}/{f['requests']} ok, {f['requests_per_s']:.1f} req/s, "
        f"split {'/'.join(f'{x:.0f}' for x in f['split'])}, cached {share}"
    )


# --- report ---


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    up, cfg = result["upstream"], result["config"]
    lines = [
        "",
        f"chat, {cfg['prompts']} shared system prompts, {result['prompt_tokens']} prompt tokens, "
        f"{cfg['output_tokens']} out; two servers: TTFT {up['ttft_ms']} ms + {up['prefill_us_per_token']} µs per "
        f"uncached prompt token, {up['prefix_cache_blocks']} cached blocks of {up['prefix_block_tokens']} tokens "
        f"each; {cfg['seconds']:g}s measured per phase, {cfg['rounds']} round(s), {result['cpus']} CPUs",
        f"{'streams':>7} {'routing':<15} {'TTFT p50':>8} {'p90':>7} {'p99':>7} {'mean':>7} {'req/s':>6} "
        f"{'errors':>6} {'cached':>6} {'split':>11}",
    ]
    lines.append("-" * len(lines[-1]))
    for level in result["levels"]:
        for routing in ROUTINGS:
            f = level[routing]
            share = f"{f['cached_share'] * 100:.0f}%" if f["cached_share"] is not None else "-"
            split = "/".join(f"{x:.0f}" for x in f["split"])
            lines.append(
                f"{level['concurrency']:>7} {routing:<15} {_f(f['ttft_ms']['p50']):>8} {_f(f['ttft_ms']['p90']):>7} "
                f"{_f(f['ttft_ms']['p99']):>7} {_f(f['ttft_ms']['mean']):>7} {_f(f['requests_per_s']):>6} "
                f"{f['errors'] + f['cancelled']:>6} {share:>6} {split:>11}"
            )
        g = {k: "x" + _f(v, 2) for k, v in level["gain"].items()}
        lines.append(f"{'':>7} {'gain (lif/prefix)':<15} {g['p50']:>8} {g['p90']:>7} {g['p99']:>7} {g['mean']:>7}")
    lines.append("(TTFT in ms, client-side; cached: prompt tokens the servers found cached, warm-up included)")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    levels = result["levels"]
    x = np.arange(len(levels))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    ax = axes[0]
    width = 0.2
    for k, routing in enumerate(ROUTINGS):
        for j, stat in enumerate(("p50", "p99")):
            ax.bar(
                x + (2 * k + j - 1.5) * width,
                [lv[routing]["ttft_ms"][stat] for lv in levels],
                width,
                color=f"C{k}",
                alpha=1.0 if j == 0 else 0.5,
                label=f"{routing} {stat}",
            )
    ax.set(title="TTFT", ylabel="ms", xlabel="streams", xticks=x)
    ax.set_xticklabels([str(lv["concurrency"]) for lv in levels])
    ax = axes[1]
    for k, routing in enumerate(ROUTINGS):
        shares = [(lv[routing]["cached_share"] or math.nan) * 100 for lv in levels]
        ax.bar(x + (k - 0.5) * 0.35, shares, 0.35, color=f"C{k}", label=routing)
    ax.set(title="prompt tokens found cached", ylabel="%", xlabel="streams", xticks=x, ylim=(0, 100))
    ax.set_xticklabels([str(lv["concurrency"]) for lv in levels])
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("prefix-aware routing vs least in flight: shared system prompts over two servers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- command line ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.prefix", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=positive_ints, default=[4, 16], help="closed-loop levels")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first (caches fill)")
    parser.add_argument("--rounds", type=int, default=1, help="phases per routing and level, alternating")
    parser.add_argument("--prompts", type=int, default=12, help="shared system prompts")
    parser.add_argument("--system-tokens", type=int, default=1500, help="each system prompt's length")
    parser.add_argument("--turns", type=int, default=64, help="distinct user turns per system prompt")
    parser.add_argument("--output-tokens", type=int, default=8)
    parser.add_argument("--ttft-ms", type=float, default=10.0, help="the synthetic TTFT of a fully cached prompt")
    parser.add_argument("--token-delay-ms", type=float, default=10.0)
    parser.add_argument("--prefill-us", type=float, default=100.0, help="TTFT per uncached prompt token (µs)")
    parser.add_argument("--block-tokens", type=int, default=64, help="cache and routing block")
    parser.add_argument(
        "--cache-blocks", type=int, default=192, help="blocks each server caches (default: about 2/3 of the prompts)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0 or args.prompts < 2:
        parser.error("--rounds must be >= 1, --seconds > 0, --warmup >= 0, --prompts >= 2")
    return args


def _say(line: str) -> None:
    print(f"[prefix] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = measure(args)
    _, wrote = save_results(args, "prefix", figures, started, plot, format_table)
    print(wrote)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
