"""The real stack for end-to-end tests: `python -m gateway serve` launching the real tritonserver
with the real SmolLM2 model, on free loopback ports, stopped with SIGINT like a user's Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Stack:
    base_url: str  # http://127.0.0.1:PORT
    triton_grpc_port: int
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
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--cache-dir", str(tmp / "cache"), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    return proc, port, log


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
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    proc, port, log = start_gateway(
        tmp,
        "--triton-http-port", str(http),
        "--triton-grpc-port", str(grpc_port),
        "--triton-metrics-port", str(metrics),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/ready", proc, 240, log)
    yield Stack(base, grpc_port, tmp / "cache" / "tritonserver.log", proc)
    code = stop(proc)
    assert code == 0, log.read_text()[-4000:]
    assert not port_open(grpc_port), "tritonserver outlived the gateway"
