"""Interactive latency with a large batch running beside it, against none (issue 15).

Against the ``synthetic`` model, each turn is a closed loop of ``concurrency`` streamed chat requests
(``max_tokens`` 32 by default) for ``--seconds``, their TTFT taken as the time to the first SSE event
(the gateway sends its headers and first chunk with the first token). Turns without a batch and turns
with one running take turns, round by round, who goes first alternating. For a turn with a batch, a
batch of ``--batch-lines`` chat lines on the same model (uploaded once) is created, the turn starts once
its lines are running, and it is cancelled (and its lines in flight left to finish) when the turn ends;
the lines it completed during the turn give its rate.

Batch lines take upstream slots behind interactive requests (gateway/limits/admission.py): the figures
show what a batch still costs interactive traffic (the gateway's and Triton's CPU, slots) and how fast
it goes meanwhile. The issue's goal: TTFT p50 and p99 with a batch within 10% of without.

    python -m perf.batch_interference --launch [--rounds 3] [--concurrency 2] [--seconds 30]
    python -m perf.batch_interference --gateway http://127.0.0.1:8080 [--model synthetic]

Writes perf/results/batch_interference.json and .png, and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.config import REPO_ROOT
from perf.metrics import percentile
from perf.sse import SSEParser
from perf.stack import positive_ints, run_loop, save_results, stack_or_running

GOAL = 1.10  # with a batch / without, TTFT p50 and p99
PHASES = ("without", "with")


def _say(line: str) -> None:
    print(f"[batch_interference] {line}", file=sys.stderr, flush=True)


async def _stream_ttft(session: aiohttp.ClientSession, url: str, body: bytes) -> float | None:
    """Seconds to the first SSE event of one streamed chat request (read to its end); None on failure."""
    began = time.monotonic()
    first: float | None = None
    parser = SSEParser()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            await resp.read()
            return None
        async for chunk in resp.content.iter_any():
            if first is None and parser.feed(chunk):
                first = time.monotonic() - began
    return first


async def interactive_turn(
    session: aiohttp.ClientSession, args: argparse.Namespace, concurrency: int
) -> tuple[list[float], int]:
    body = orjson.dumps(
        {
            "model": args.model,
            "messages": [{"role": "user", "content": "interactive"}],
            "max_tokens": args.max_tokens,
            "stream": True,
        }
    )
    url = args.gateway + "/v1/chat/completions"
    ttfts: list[float] = []
    errors = 0
    deadline = time.monotonic() + args.seconds

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            try:
                ttft = await _stream_ttft(session, url, body)
            except (aiohttp.ClientError, TimeoutError):
                ttft = None
            if ttft is None:
                errors += 1
            else:
                ttfts.append(ttft)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts, errors


async def upload_lines(session: aiohttp.ClientSession, args: argparse.Namespace) -> str:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": args.model,
                "messages": [{"role": "user", "content": f"batch line {i}"}],
                "max_tokens": args.batch_max_tokens,
            },
        }
        for i in range(args.batch_lines)
    ]
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", b"".join(orjson.dumps(x) + b"\n" for x in lines), filename="lines.jsonl")
    async with session.post(args.gateway + "/v1/files", data=form) as resp:
        resp.raise_for_status()
        return str((await resp.json())["id"])


async def _batch(session: aiohttp.ClientSession, args: argparse.Namespace, batch_id: str) -> dict[str, Any]:
    async with session.get(f"{args.gateway}/v1/batches/{batch_id}") as resp:
        resp.raise_for_status()
        batch: dict[str, Any] = await resp.json()
        return batch


async def start_batch(session: aiohttp.ClientSession, args: argparse.Namespace, file_id: str) -> dict[str, Any]:
    """A batch created and running (some lines done)."""
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    async with session.post(args.gateway + "/v1/batches", json=body) as resp:
        resp.raise_for_status()
        batch: dict[str, Any] = await resp.json()
    deadline = time.monotonic() + 120
    while batch["status"] == "validating" or batch["request_counts"]["completed"] < 1:
        if batch["status"] not in ("validating", "in_progress") or time.monotonic() > deadline:
            raise SystemExit(f"the batch did not start: {batch}")
        await asyncio.sleep(0.1)
        batch = await _batch(session, args, batch["id"])
    return batch


async def stop_batch(session: aiohttp.ClientSession, args: argparse.Namespace, batch_id: str) -> dict[str, Any]:
    async with session.post(f"{args.gateway}/v1/batches/{batch_id}/cancel") as resp:
        resp.raise_for_status()
    deadline = time.monotonic() + 120
    while (batch := await _batch(session, args, batch_id))["status"] not in ("cancelled", "completed"):
        if time.monotonic() > deadline:
            raise SystemExit(f"the batch was not cancelled: {batch}")
        await asyncio.sleep(0.1)
    return batch


def _ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000 if values else float("nan")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    turns: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        file_id = await upload_lines(session, args)
        _say(f"uploaded {args.batch_lines} batch lines ({file_id})")
        await interactive_turn(session, argparse.Namespace(**{**vars(args), "seconds": 1.0}), 1)  # warm-up
        for concurrency in args.concurrency:
            for rnd in range(args.rounds):
                for phase in PHASES if rnd % 2 == 0 else PHASES[::-1]:
                    batch = await start_batch(session, args, file_id) if phase == "with" else None
                    began = time.monotonic()
                    ttfts, errors = await interactive_turn(session, args, concurrency)
                    elapsed = time.monotonic() - began
                    turn: dict[str, Any] = {"concurrency": concurrency, "round": rnd, "phase": phase}
                    if batch is not None:
                        during = (await _batch(session, args, batch["id"]))["request_counts"]["completed"]
                        turn["batch_lines_per_s"] = (during - batch["request_counts"]["completed"]) / elapsed
                        await stop_batch(session, args, batch["id"])
                    turn |= {
                        "requests": len(ttfts),
                        "errors": errors,
                        "ttft_ms": [round(t * 1000, 3) for t in ttfts],
                        "p50_ms": _ms(ttfts, 50),
                        "p99_ms": _ms(ttfts, 99),
                    }
                    turns.append(turn)
                    rate = f", batch {turn['batch_lines_per_s']:.1f} lines/s" if batch is not None else ""
                    _say(
                        f"concurrency {concurrency} round {rnd + 1}/{args.rounds} {phase:>7} a batch: "
                        f"{len(ttfts)} requests, TTFT p50 {turn['p50_ms']:.1f} ms p99 {turn['p99_ms']:.1f} ms{rate}"
                    )
    return {"turns": turns, "summary": summarize(turns), "goal_ratio": GOAL}


def summarize(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: each phase's TTFT pooled over its rounds, and with/without ratios."""
    rows = []
    for concurrency in sorted({t["concurrency"] for t in turns}):
        row: dict[str, Any] = {"concurrency": concurrency}
        for phase in PHASES:
            mine = [t for t in turns if t["concurrency"] == concurrency and t["phase"] == phase]
            pooled = [v / 1000 for t in mine for v in t["ttft_ms"]]
            row[phase] = {
                "requests": len(pooled),
                "errors": sum(t["errors"] for t in mine),
                "p50_ms": _ms(pooled, 50),
                "p90_ms": _ms(pooled, 90),
                "p99_ms": _ms(pooled, 99),
            }
            if phase == "with":
                rates = [t["batch_lines_per_s"] for t in mine]
                row[phase]["batch_lines_per_s"] = sum(rates) / len(rates) if rates else float("nan")
        for stat in ("p50_ms", "p99_ms"):
            ratio = row["with"][stat] / row["without"][stat]
            row[f"ratio_{stat[:3]}"] = ratio
            row[f"goal_{stat[:3]}_met"] = ratio <= GOAL
        rows.append(row)
    return rows


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "",
        f"interactive TTFT on {result['config']['model']}, without and with a batch running "
        f"(goal: with / without <= {GOAL:.2f} at p50 and p99)",
        f"{'conc':>4} | {'requests':>15} | {'p50 ms':>17} | {'p99 ms':>17} | {'ratio p50':>9} | {'ratio p99':>9}"
        f" | {'batch lines/s':>13}",
    ]
    for row in result["summary"]:
        a, b = row["without"], row["with"]
        over50, over99 = ("" if row[f"goal_{s}_met"] else "!" for s in ("p50", "p99"))
        lines.append(
            f"{row['concurrency']:>4} | {a['requests']:>7} / {b['requests']:>5}"
            f" | {a['p50_ms']:>7.1f} / {b['p50_ms']:>7.1f} | {a['p99_ms']:>7.1f} / {b['p99_ms']:>7.1f}"
            f" | {row['ratio_p50']:>8.3f}{over50} | {row['ratio_p99']:>8.3f}{over99} | {b['batch_lines_per_s']:>13.1f}"
        )
    lines.append("(without / with; '!': over the goal)")
    errors = sum(t["errors"] for t in result["turns"])
    if errors:
        lines.append(f"{errors} interactive requests failed")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    labels = [str(r["concurrency"]) for r in rows]
    x = range(len(rows))
    for ax, stat in zip(axes[:2], ("p50_ms", "p99_ms"), strict=True):
        for k, phase in enumerate(PHASES):
            ax.bar([i + (k - 0.5) * 0.38 for i in x], [r[phase][stat] for r in rows], 0.38, label=f"{phase} a batch")
        ax.set(title=f"interactive TTFT {stat[:3]}", ylabel="ms", xlabel="interactive streams", xticks=list(x))
        ax.set_xticklabels(labels)
        ax.legend(loc="lower right")
    ax = axes[2]
    for stat in ("p50", "p99"):
        ax.plot(list(x), [r[f"ratio_{stat}"] for r in rows], marker="o", label=f"TTFT {stat} with / without")
    ax.axhline(GOAL, color="tab:red", linestyle="--", alpha=0.6, label=f"goal {GOAL:.2f}")
    ax.set(title="interference", xlabel="interactive streams", xticks=list(x))
    ax.set_xticklabels(labels)
    ax.legend()
    fig.suptitle(
        f"a batch of {result['config']['batch_lines']} lines beside interactive traffic ({result['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@contextmanager
def _own_data_dir(launch: bool) -> Iterator[None]:
    """A launched stack's files and batches in a temporary data dir (never the checkout's .data/)."""
    if not launch or "GATEWAY_DATA_DIR" in os.environ:
        yield
        return
    data = tempfile.mkdtemp(prefix="batch-interference-data-")
    os.environ["GATEWAY_DATA_DIR"] = data
    try:
        yield
    finally:
        os.environ.pop("GATEWAY_DATA_DIR", None)
        shutil.rmtree(data, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.batch_interference", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--launch", action="store_true", help="start `python -m gateway serve` on free ports")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="a running gateway (without --launch)")
    parser.add_argument("--triton", default="127.0.0.1:8001", help="its Triton's gRPC HOST:PORT (without --launch)")
    parser.add_argument("--gateway-pid", type=int, default=0, help="default: who listens on the gateway's port")
    parser.add_argument("--model", default="synthetic", help="model id at the gateway")
    parser.add_argument("--concurrency", type=positive_ints, default=[2], help="interactive streams (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each phase takes, interleaved")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of one turn (s)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per interactive request")
    parser.add_argument("--batch-lines", type=int, default=20_000, help="lines of the batch (it never runs out)")
    parser.add_argument("--batch-max-tokens", type=int, default=64, help="tokens per batch line")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log = args.out / "batch_interference_stack.log"
    with (
        _own_data_dir(args.launch),
        stack_or_running(args.launch, args.gateway, args.triton, args.gateway_pid, log) as target,
    ):
        args.gateway, args.triton = target.gateway, target.triton
        figures = run_loop(measure(args))
    _, wrote = save_results(args, "batch_interference", figures, started, plot, format_table)
    print(wrote)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
