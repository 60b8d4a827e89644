"""How fast a saturated upstream is refused: admission answers 503 instead of piling up.

Starts the stack (embedded Triton) plus a second gateway whose `synthetic` model admits
``--cap`` requests in flight and queues none. Holds ``--cap`` long streams, then sends
``--requests`` more one after another and times each 503.

    python -m perf.overload [--requests 200] [--cap 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from gateway.config import REPO_ROOT
from perf.metrics import distribution
from perf.stack import free_port, launch_stack

WEIGHTS = REPO_ROOT / "model_repository" / "smollm2" / "weights"


async def measure(base: str, cap: int, requests: int) -> list[float]:
    body = {"model": "synthetic", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    async with aiohttp.ClientSession() as session:
        for _ in range(150):
            try:
                async with session.get(base + "/ready") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)

        async def hold() -> None:
            long = {**body, "max_tokens": 4000, "stream": True}
            async with session.post(base + "/v1/chat/completions", json=long) as resp:
                await resp.read()

        holders = [asyncio.create_task(hold()) for _ in range(cap)]
        await asyncio.sleep(0.5)
        times = []
        for i in range(requests):
            start = time.perf_counter()
            async with session.post(base + "/v1/chat/completions", json=body) as resp:
                await resp.read()
                if resp.status != 503:
                    raise SystemExit(f"request {i}: expected 503, got {resp.status}")
            times.append(time.perf_counter() - start)
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--cap", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args()
    stack = launch_stack()
    config = args.out / "overload.toml"
    config.write_text(
        f'grpc_port = {free_port()}\n[[models]]\nid = "synthetic"\ntriton_url = "{stack.triton}"\n'
        f'triton_model = "synthetic"\ntokenizer_dir = "{WEIGHTS}"\nmax_in_flight = {args.cap}\nmax_queue = 0\n'
    )
    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
    gateway = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        times = asyncio.run(measure(f"http://127.0.0.1:{port}", args.cap, args.requests))
    finally:
        gateway.send_signal(signal.SIGINT)
        gateway.wait(30)
        stack.stop()
    summary = distribution(times)
    path = args.out / f"overload_{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "ms": summary}, indent=2))
    print(
        f"503 for a saturated upstream, {args.requests} requests: p50 {summary['p50']:.2f} ms, "
        f"p99 {summary['p99']:.2f} ms, max {summary['max']:.2f} ms (wrote {path})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
