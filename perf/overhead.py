"""The gateway's own CPU per request, measured in one process with the client in another (issue 13).

perf/tiny.py measures the whole stack on a machine whose cores Triton and the load generator share, so
a change of a few percent drowns in its noise. This runs the gateway's real app in this process and a
client process sending it chat requests (streamed and not) over loopback; the figure is this process's
CPU time per request, in which nothing but the server's work is counted.

``--engine stand-in`` (the default): a stand-in engine in place of Triton answers every generation with
one token at once, no gRPC. What is left is the gateway's Python work and aiohttp's server side.

``--engine triton``: the gateway's real Triton client (shared gRPC streams) in front of a launched
tritonserver's ``synthetic`` model, beside the transport floor (perf/floor.py's aiohttp server and
grpc.aio streams, in this same process, with the same prompt ids and token count), taking turns. The
gateway's CPU per request less the floor's is its own share, measured to a percent or two here where
tiny.py's whole-stack figures swing by tens; ``--tokens N`` adds its CPU per streamed token.
``--parts`` takes both apart in the same turns: the floor's handler over the gateway's own Triton client
(``engine``) and over no upstream (``aiohttp``), and the floor's streams read with no HTTP (``grpc-alone``).

    python -m perf.overhead [--engine stand-in|triton] [--parts] [--tokens 1] [--requests 3000] [--rounds 5]

Run it with another tree's gateway for a before/after (``PYTHONPATH=<worktree> python perf/overhead.py``,
the model files still this checkout's), alternating: the median of the rounds, in µs per request, is
what to compare. Not a measure of TTFT, only of CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import statistics
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

try:  # the gateway's gRPC core settings, before grpc loads (a tree older than them: grpc's defaults)
    from gateway import grpc_env

    grpc_env.apply()
except ImportError:
    pass

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.contract import ModelContract

MODEL = "synthetic"
HERE = Path(__file__).resolve().parents[1]  # this checkout, also when another tree's gateway is imported
WEIGHTS = HERE / "model_repository" / "smollm2" / "weights"
CONFIG = HERE / "model_repository" / "synthetic" / "config.pbtxt"
MESSAGES = [{"role": "user", "content": "Say hi."}]
KINDS = (("stream", True), ("whole", False))
CHAT = "/v1/chat/completions"
TokenSource = Callable[[], AsyncIterator[list[int]]]  # perf.floor's: one request's token ids, response by response


class OneToken:
    """A stand-in for a Triton server: the synthetic model's contract, one token per generation, at once."""

    url = "in-process:0"

    def __init__(self, contract: ModelContract) -> None:
        self._contract = contract

    async def contract(self, model: str) -> ModelContract:
        return self._contract

    async def generate(
        self, contract: ModelContract, request: GenerateRequest, end_id: int | None, pad_id: int | None
    ) -> AsyncGenerator[Tokens, None]:
        yield Tokens([1, 2][: request.sampling.max_tokens])

    async def model_ready(self, model: str) -> bool:
        return True

    async def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:  # the rest of the Engine interface: not used here
        raise AttributeError(name)


def _contract() -> ModelContract:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(CONFIG.read_text(), model_config_pb2.ModelConfig())
    return ModelContract.from_config(config)


async def client(url: str, requests: int, concurrency: int, stream: bool, tokens: int) -> None:
    """The load (run in a process of its own): ``requests`` requests, ``concurrency`` in flight."""
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": tokens, "stream": stream})
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            async with session.post(url, data=body, headers=headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"HTTP {resp.status}: {raw[:300]!r}")

        await _closed_loop(one, requests, concurrency)


async def _closed_loop(one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> None:
    """``one()`` ``requests`` times, ``concurrency`` at a time. (perf/bench.py has its own: this file runs
    by path, and against other trees' ``perf``, so it imports nothing of perf/ outside :func:`main`.)"""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _round(url: str, requests: int, concurrency: int, stream: bool, tokens: int = 1) -> float:
    """This process's CPU seconds per request while a client process sends ``requests`` requests (this
    process serves them and does nothing else meanwhile)."""
    cmd = [sys.executable, __file__, "--client", url, "--requests", str(requests)]
    cmd += ["--concurrency", str(concurrency), "--stream", str(int(stream)), "--tokens", str(tokens)]
    proc = await asyncio.create_subprocess_exec(*cmd, env={**os.environ, "PYTHONSAFEPATH": "1"})
    await asyncio.sleep(0)  # its start-up is not the gateway's: measured from its first request on
    cpu = time.process_time()
    if await proc.wait() != 0:
        raise SystemExit(f"the client failed ({proc.returncode})")
    return (time.process_time() - cpu) / requests


async def _serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)  # as gateway serve runs it: no aiohttp access log
    return server


def _config(args: argparse.Namespace, triton: str | None) -> GatewayConfig:
    model = ModelConfig(
        id=MODEL, triton_model=MODEL, triton_url=triton, tokenizer_dir=WEIGHTS, max_output_tokens=max(64, args.tokens)
    )
    return GatewayConfig(grpc_port=None, usage_db=Path(args.tmp) / "usage.sqlite", models=[model])


Measure = Callable[[bool], Awaitable[float]]  # (streamed?) -> this process's CPU seconds per request


def over_http(url: str, args: argparse.Namespace) -> Measure:
    """A server in this process, loaded by a client process."""
    return lambda stream: _round(url, args.requests, args.concurrency, stream, args.tokens)


async def _rounds(
    args: argparse.Namespace, arms: dict[str, Measure], alone: dict[str, Measure]
) -> dict[str, list[float]]:
    """µs per request of each arm and kind (``alone``: one kind, no HTTP), taking turns within every round."""
    for measure in arms.values():  # warm-up
        await measure(True)
    figures: dict[str, list[float]] = {f"{name}-{kind}": [] for name in arms for kind, _ in KINDS}
    figures |= {name: [] for name in alone}
    turns = [(f"{name}-{kind}", measure, stream) for name, measure in arms.items() for kind, stream in KINDS]
    turns += [(name, measure, True) for name, measure in alone.items()]
    for rnd in range(args.rounds):
        for name, measure, stream in turns:
            us = await measure(stream) * 1e6
            figures[name].append(us)
            say(f"round {rnd + 1}/{args.rounds} {name:<16} {us:7.1f} µs/request")
    return figures


async def stand_in(args: argparse.Namespace) -> dict[str, list[float]]:
    engine = OneToken(_contract())
    server = await _serve(create_app(_config(args, None), lambda url: engine))
    try:
        return await _rounds(args, {"gateway": over_http(str(server.make_url(CHAT)), args)}, {})
    finally:
        await server.close()


async def with_triton(args: argparse.Namespace, triton: str) -> dict[str, list[float]]:
    """The gateway's real engine and the transport floor, both in this process, in front of ``triton``;
    with ``--parts``, the floor taken apart too (see :func:`parts`)."""
    from perf import floor, targets

    async with contextlib.AsyncExitStack() as stack:

        async def serve(app: web.Application) -> TestServer:
            server = await _serve(app)
            stack.push_async_callback(server.close)
            return server

        gateway = await serve(create_app(_config(args, triton)))
        async with aiohttp.ClientSession() as session:  # the prompt's ids, as the gateway sends them
            body = {"model": MODEL, "messages": MESSAGES, "add_generation_prompt": True}
            async with session.post(gateway.make_url("/tokenize"), json=body) as resp:
                ids: list[int] = (await resp.json())["tokens"]
        request = targets.direct_request(MODEL, targets.Workload(MESSAGES, ids, ids, args.tokens))
        on_streams = floor.on_streams(floor.Streams(triton, args.triton_streams), request)
        say(f"the prompt is {len(ids)} tokens; {args.tokens} token(s) per request")
        sources = {"floor": on_streams, **(await parts(stack, args, triton, ids) if args.parts else {})}
        arms = {"gateway": over_http(str(gateway.make_url(CHAT)), args)}
        for name, source in sources.items():
            arms[name] = over_http(str((await serve(floor.app(source, len(ids)))).make_url(CHAT)), args)
        alone: dict[str, Measure] = {}
        if args.parts:
            alone["grpc-alone"] = lambda _: _drive(on_streams, args.requests, args.concurrency)
        return await _rounds(args, arms, alone)


async def parts(
    stack: contextlib.AsyncExitStack, args: argparse.Namespace, triton: str, ids: list[int]
) -> dict[str, TokenSource]:
    """The floor's HTTP side over other token sources: ``engine``, the gateway's own Triton client
    (:class:`TritonClient`, its shared streams) with none of its API layers; ``aiohttp``, no upstream
    (the tokens at once). With ``grpc-alone`` (the floor's streams driven from this process, no HTTP),
    they split the floor into its transports, and the gateway's share into client and the rest."""
    from gateway.core.types import SamplingParams
    from gateway.engine.triton import TritonClient

    client = TritonClient(triton, streams=args.triton_streams)
    stack.push_async_callback(client.close)
    contract = await client.contract(MODEL)
    sampling = SamplingParams(max_tokens=args.tokens)
    count = itertools.count()

    async def engine() -> AsyncIterator[list[int]]:
        request = GenerateRequest(f"engine-{next(count)}", ids, sampling)
        async for tokens in client.generate(contract, request, None, None):
            yield tokens.ids

    async def no_upstream() -> AsyncIterator[list[int]]:
        for _ in range(args.tokens):
            yield [1]

    return {"engine": engine, "aiohttp": no_upstream}


async def _drive(source: TokenSource, requests: int, concurrency: int) -> float:
    """This process's CPU seconds per request while it reads ``requests`` requests' tokens from ``source``
    itself, ``concurrency`` at a time."""

    async def one() -> None:
        async for _ in source():
            pass

    cpu = time.process_time()
    await _closed_loop(one, requests, concurrency)
    return (time.process_time() - cpu) / requests


def summary(figures: dict[str, list[float]], tokens: int) -> dict[str, Any]:
    """Each arm's median and rounds; with the floor, the gateway's own share (its CPU less the floor's) and
    their ratio; with more than one token, the same per token."""
    medians = {name: statistics.median(v) for name, v in figures.items()}
    arms = {name: {"median_us": medians[name], "rounds_us": v} for name, v in figures.items()}
    result: dict[str, Any] = {"tokens": tokens, "arms": arms}
    for kind, _ in KINDS:
        gw, fl = medians.get(f"gateway-{kind}"), medians.get(f"floor-{kind}")
        if gw is None or fl is None:
            continue
        own = gw - fl
        share: dict[str, float | None] = {
            "us_per_request": own,
            "ratio": gw / fl,
            "us_per_token": own / tokens if tokens > 1 else None,
        }
        engine = medians.get(f"engine-{kind}")
        if engine is not None:  # --parts: the share split at the gateway's Triton client
            share["client_us"] = engine - fl
            share["api_us"] = gw - engine
        result.setdefault("own", {})[kind] = share
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'arm':<16} {'median µs/request':>18}   rounds"]
    for name, arm in result["arms"].items():
        rounds = ", ".join(f"{v:.0f}" for v in arm["rounds_us"])
        lines.append(f"{name:<16} {arm['median_us']:18.1f}   {rounds}")
    for kind, own in result.get("own", {}).items():
        line = f"gateway's own share, {kind}: {own['us_per_request']:.0f} µs/request ({own['ratio']:.2f} × the floor)"
        if own["us_per_token"] is not None:
            line += f", {own['us_per_token']:.1f} µs per token"
        if own.get("client_us") is not None:
            line += f"; its Triton client {own['client_us']:.0f} µs over the floor's, the rest {own['api_us']:.0f} µs"
        lines.append(line)
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (name, arm) in enumerate(arms.items()):
        ax.bar(k, arm["median_us"], color=f"C{k // 2}", alpha=1.0 if name.endswith("stream") else 0.6)
        ax.plot([k] * len(arm["rounds_us"]), arm["rounds_us"], "k.", markersize=4)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(list(arms), rotation=15)
    ax.set(ylabel="CPU µs per request (bars: median; dots: rounds)")
    ax.set_title(f"server CPU per chat request, {result['tokens']} token(s), {result['config']['engine']} engine")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def say(line: str) -> None:
    print(f"[overhead] {line}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.overhead", description=__doc__)
    parser.add_argument("--engine", choices=("stand-in", "triton"), default="stand-in")
    parser.add_argument("--tokens", type=int, default=1, help="max_tokens of every request (--engine triton)")
    parser.add_argument("--requests", type=int, default=3000, help="per round and kind")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--parts", action="store_true", help="with --engine triton: also the floor taken apart (aiohttp, engine, grpc)"
    )
    parser.add_argument("--triton-streams", type=int, default=4, help="the floor's shared streams (as the gateway's)")
    parser.add_argument("--tmp", default="/tmp", help="where the usage ledger's file goes")
    parser.add_argument("--out", type=Path, default=HERE / "perf" / "results", help="where the JSON and PNG go")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the load process's mode
    parser.add_argument("--stream", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tokens > 1 and args.engine == "stand-in" and not args.client:
        parser.error("--tokens needs --engine triton (the stand-in answers with one token)")
    return args


def _console_to_devnull() -> None:
    """The gateway's console log as ``gateway serve`` sets it up (the access log included), written to
    /dev/null: its cost is in, its lines are not on the terminal. A tree older than
    ``gateway.observability.logs`` gets ``logging.basicConfig``, as its ``serve`` did."""
    try:
        from gateway.observability import logs
    except ImportError:
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logs.setup("INFO")
    devnull = open(os.devnull, "w")  # noqa: SIM115 (kept open for the process's life)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)


def main(args: argparse.Namespace) -> int:
    import uvloop  # as the gateway runs

    sys.path.append(str(HERE))  # perf.floor, perf.stack: this checkout's (run by path, perf is no package)
    from perf.stack import launch_stack, save_results

    started = time.monotonic()
    _console_to_devnull()
    if args.engine == "stand-in":
        figures = uvloop.run(stand_in(args))
    else:
        stack = launch_stack(log=args.out / "overhead_triton.log")  # its tritonserver; its gateway stays idle
        try:
            figures = uvloop.run(with_triton(args, stack.triton))
        finally:
            stack.stop()
    stem = "overhead" if args.engine == "stand-in" else f"overhead_triton_{args.tokens}"
    _, wrote = save_results(args, stem, summary(figures, args.tokens), started, plot, format_table)
    print(wrote)
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.client:
        import uvloop

        uvloop.run(
            client(
                arguments.client, arguments.requests, arguments.concurrency, bool(arguments.stream), arguments.tokens
            )
        )
        sys.exit(0)
    sys.exit(main(arguments))
