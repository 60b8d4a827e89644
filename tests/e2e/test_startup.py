"""Start-up fails fast and says why: a port in use, a missing tokenizer, Ctrl-C while Triton starts; an
unreachable --triton-url is a warning at once; a Triton that is not ours is never taken for ours.

These run `python -m gateway serve` as a user would; none of them needs the real model to load (the
launched tritonserver is a stand-in, tests/e2e/standin.py, or nothing is launched).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.embedded.tritonserver import TritonLaunchError, TritonPorts, TritonServer
from perf.stack import free_port
from tests.conftest import MODEL_REPOSITORY, WEIGHTS
from tests.e2e.conftest import start_gateway, stop, wait_http
from tests.e2e.standin import ReadyServer, processes_mentioning, stand_in

pytestmark = pytest.mark.e2e

# name in the flags below -> (what the error calls it, its flag, its environment variable)
PORTS = {
    "rest": ("gateway REST", "--port", "GATEWAY_PORT"),
    "grpc": ("gateway gRPC", "--grpc-port", "GATEWAY_GRPC_PORT"),
    "triton-http": ("Triton HTTP", "--triton-http-port", "TRITON_HTTP_PORT"),
    "triton-grpc": ("Triton gRPC", "--triton-grpc-port", "TRITON_GRPC_PORT"),
    "triton-metrics": ("Triton metrics", "--triton-metrics-port", "TRITON_METRICS_PORT"),
}


def wait_for_text(log: Path, text: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not in the log within {within}s:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.1)


def exit_code(proc: subprocess.Popen[bytes], within: float = 90.0) -> int:
    try:
        return proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.parametrize("taken", list(PORTS))
def test_a_port_in_use_is_a_one_line_error_naming_it(tmp_path: Path, taken: str) -> None:
    ports = {name: free_port() for name in PORTS if name != "rest"}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0 if taken == "rest" else ports[taken]))
        squatter.listen()
        port = squatter.getsockname()[1]
        extra = [flag for name, p in ports.items() for flag in (PORTS[name][1], str(p))]
        if taken == "rest":
            extra += ["--port", str(port)]  # given last: it wins over start_gateway's own --port
        proc, _, log = start_gateway(tmp_path, *extra)
        code = exit_code(proc)
    text = log.read_text(errors="replace")
    what, flag, env = PORTS[taken]
    assert code == 2, text[-4000:]
    assert text.strip().splitlines()[-1] == f"[gateway] error: port {port} ({what}) is in use: set {flag} or {env}"
    assert "Traceback" not in text and "starting tritonserver" not in text
    assert "[gateway] model " not in text  # said before the model is looked at (converting it takes minutes)


def test_a_missing_tokenizer_is_an_error_before_serving(tmp_path: Path) -> None:
    proc, _, log = start_gateway(tmp_path, "--triton-url", f"127.0.0.1:{free_port()}", "--triton-model", "nosuch")
    code = exit_code(proc)
    text = log.read_text(errors="replace")
    missing = MODEL_REPOSITORY / "nosuch" / "weights" / "tokenizer.json"
    assert code == 2, text[-4000:]
    assert (
        text.strip()
        .splitlines()[-1]
        .startswith(f"[gateway] error: no tokenizer for model 'smollm2-135m-instruct': {missing} is missing")
    )
    assert "serving" not in text and "Traceback" not in text


async def test_an_unreachable_triton_url_is_a_warning_at_once(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proc, port, log = start_gateway(
        tmp_path, "--triton-url", dead, "--triton-model", "synthetic", "--tokenizer-dir", str(WEIGHTS)
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 60, log)
        text = log.read_text(errors="replace")
        warning = next(line for line in text.splitlines() if f"Triton at {dead} is not ready at start" in line)
        assert "WARNING" in warning and "UNAVAILABLE" in warning
        assert text.index(warning) < text.index("serving")  # said before the banner, not after a timeout
    finally:
        assert stop(proc) == 0


def test_ctrl_c_while_waiting_for_triton_exits_130_and_stops_it(tmp_path: Path) -> None:
    binary = stand_in(tmp_path / "standin", serve=False)  # never ready
    proc, _, log = start_gateway(tmp_path, "--tritonserver", str(binary), *triton_ports())
    try:
        wait_for_text(log, "waiting for tritonserver")  # said inside wait_ready, once it is launched
        assert processes_mentioning(str(binary), besides=proc.pid), "the stand-in tritonserver is not running"
        proc.send_signal(signal.SIGINT)
        code = exit_code(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert code == 130, text[-4000:]
    assert "interrupted during start-up" in text and "tritonserver stopped" in text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert not processes_mentioning(str(binary), besides=os.getpid())


def triton_ports() -> list[str]:
    return [
        "--triton-http-port", str(free_port()),
        "--triton-grpc-port", str(free_port()),
        "--triton-metrics-port", str(free_port()),
    ]  # fmt: skip


@pytest.fixture
def someone_elses_triton() -> Iterator[int]:
    """An HTTP server that answers Triton's readiness probe, as another Triton on the port would."""
    server = ReadyServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_another_triton_answering_on_the_port_is_not_taken_for_ours(tmp_path: Path, someone_elses_triton: int) -> None:
    # ours loads for a moment, then fails to bind (as the real one does) while the other one answers ready
    binary = stand_in(
        tmp_path / "standin", lifetime=3.0, serve=False, code=1,
        last_words="failed to start HTTP service: Unavailable - Socket '127.0.0.1' already in use",
    )  # fmt: skip
    server = TritonServer(
        MODEL_REPOSITORY, tmp_path / "cache", TritonPorts(someone_elses_triton, free_port(), free_port()), str(binary)
    )
    server.start()
    try:
        with pytest.raises(TritonLaunchError) as err:
            server.wait_ready(timeout=120)
    finally:
        server.stop()
    assert "exited with code 1" in str(err.value) and "already in use" in str(err.value)
