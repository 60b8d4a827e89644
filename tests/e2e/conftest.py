"""The real stack for end-to-end tests: `python -m gateway serve` launching the real tritonserver
with the real SmolLM2 model, on free loopback ports, stopped with SIGINT like a user's Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from perf.stack import free_port
from tests.conftest import REPO

MODEL = "smollm2-135m-instruct"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Stack:
    base_url: str  # http://127.0.0.1:PORT
    triton_grpc_port: int
    grpc_target: str  # the gateway's gRPC API
    triton_log: Path
    process: subprocess.Popen[bytes]

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gateway exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def start_gateway(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log = tmp / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--cache-dir", str(tmp / "cache")]
    cmd += extra if "--grpc-port" in extra else [*extra, "--no-grpc"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    return proc, port, log


@contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kills ``proc`` if the test ends (a failed assertion) while it still runs: no gateway outlives its test."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    http, grpc_port, metrics, api = free_port(), free_port(), free_port(), free_port()
    proc, port, log = start_gateway(
        tmp,
        "--triton-http-port", str(http),
        "--triton-grpc-port", str(grpc_port),
        "--triton-metrics-port", str(metrics),
        "--grpc-port", str(api),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/ready", proc, 240, log)
    yield Stack(base, grpc_port, f"127.0.0.1:{api}", tmp / "cache" / "tritonserver.log", proc)
    code = stop(proc)
    assert code == 0, log.read_text()[-4000:]
    assert not port_open(grpc_port), "tritonserver outlived the gateway"


async def cancelled_after(stack: Stack, triton_request_id: str) -> int:
    """Tokens the model had generated when it saw the request cancelled (from its log line)."""
    line = re.compile(rf"request '{re.escape(triton_request_id)}' cancelled after (\d+) tokens")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        found = line.search(stack.triton_log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        await asyncio.sleep(0.1)
    pytest.fail(f"the model did not report cancelling {triton_request_id}")


def synthetic_upstream(stack: Stack) -> tuple[str, ...]:
    """Flags for a second gateway serving the stack's synthetic model (nothing launched)."""
    from tests.conftest import WEIGHTS

    return (
        "--triton-url", f"127.0.0.1:{stack.triton_grpc_port}",
        "--triton-model", "synthetic",
        "--model-id", "synthetic",
        "--tokenizer-dir", str(WEIGHTS),
    )  # fmt: skip
