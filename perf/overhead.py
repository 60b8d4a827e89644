"""The gateway's own CPU per request, in one process, with no Triton and no other process (issue 13).

perf/tiny.py measures the whole stack on a machine whose cores Triton and the load generator share, so
a change of a few percent drowns in its noise. This runs the gateway's real app in-process, with a
stand-in engine in place of Triton (it answers every generation with one token at once, no gRPC), and
a client process sending it 1-token chat requests (streamed and not) over loopback. The gateway
process's CPU time per request is then its own work and aiohttp's server side, with nothing else in
that process.

    python -m perf.overhead [--requests 3000] [--concurrency 8] [--rounds 5]

Run it with another tree's gateway for a before/after (``PYTHONPATH=<worktree> python perf/overhead.py``,
the model files still this checkout's), alternating: the median of the rounds, in µs per request, is
what to compare. Not a measure of TTFT or of gRPC, only of the
gateway's Python work per request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

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


async def client(url: str, requests: int, concurrency: int, stream: bool) -> None:
    """The load (run in a process of its own): ``requests`` requests, ``concurrency`` in flight."""
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 1, "stream": stream})
    headers = {"Content-Type": "application/json"}
    left = requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"HTTP {resp.status}: {raw[:300]!r}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _round(url: str, requests: int, concurrency: int, stream: bool) -> float:
    """The gateway's CPU seconds per request while a client process sends ``requests`` requests (this
    process serves them and does nothing else meanwhile)."""
    cmd = [sys.executable, __file__, "--client", url, "--requests", str(requests)]
    cmd += ["--concurrency", str(concurrency), "--stream", str(int(stream))]
    proc = await asyncio.create_subprocess_exec(*cmd, env={**os.environ, "PYTHONSAFEPATH": "1"})
    await asyncio.sleep(0)  # its start-up is not the gateway's: measured from its first request on
    cpu = time.process_time()
    if await proc.wait() != 0:
        raise SystemExit(f"the client failed ({proc.returncode})")
    return (time.process_time() - cpu) / requests


async def main(args: argparse.Namespace) -> int:
    config = GatewayConfig(
        grpc_port=None,
        usage_db=Path(args.tmp) / "usage.sqlite",
        models=[ModelConfig(id=MODEL, triton_model=MODEL, tokenizer_dir=WEIGHTS, max_output_tokens=64)],
    )
    engine = OneToken(_contract())
    app: web.Application = create_app(config, lambda url: engine)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)  # as gateway serve runs it: no aiohttp access log
    url = str(server.make_url("/v1/chat/completions"))
    try:
        await _round(url, 200, args.concurrency, True)  # warm-up
        figures: dict[str, list[float]] = {"chat-stream": [], "chat": []}
        for rnd in range(args.rounds):
            for name, stream in (("chat-stream", True), ("chat", False)):
                us = await _round(url, args.requests, args.concurrency, stream) * 1e6
                figures[name].append(us)
                print(f"[overhead] round {rnd + 1}/{args.rounds} {name:<12} {us:7.1f} µs/request", file=sys.stderr)
    finally:
        await server.close()
    for name, values in figures.items():
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<12} median {statistics.median(values):7.1f} µs/request (rounds: {rounds})")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.overhead", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="per round and kind")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tmp", default="/tmp", help="where the usage ledger's file goes")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the load process's mode
    parser.add_argument("--stream", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


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


if __name__ == "__main__":
    import uvloop  # as the gateway runs (imported here: a file run by path has no `perf` package to import from)

    arguments = parse_args()
    if arguments.client:
        uvloop.run(client(arguments.client, arguments.requests, arguments.concurrency, bool(arguments.stream)))
        sys.exit(0)
    _console_to_devnull()
    sys.exit(uvloop.run(main(arguments)))
