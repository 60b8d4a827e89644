"""The embedded tritonserver dies under streaming load (SIGKILL, SIGSEGV): the gateway reaps it, restarts
it and serves again; when it keeps dying, the gateway gives up and exits 1. One that hangs (ready, but
answering no stream) is found by the liveness probe, killed and restarted the same way.

One gateway (`python -m gateway serve`, real tritonserver, real model) is shared by the crash tests;
the give-up tests run a stand-in tritonserver (tests/e2e/standin.py) that answers ready and then dies
a moment later, or hangs.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from gateway.embedded.liveness import generation_probe
from perf.stack import free_port
from tests.conftest import until
from tests.e2e.conftest import port_open, start_gateway, stop, wait_http
from tests.e2e.standin import children, processes_mentioning, stand_in, stat_of, tritonservers
from tests.sse import parse_sse

pytestmark = pytest.mark.e2e

STREAMS = 4
MAX_TOKENS = 3000  # ~15 s at the synthetic model's 5 ms per token: every stream is mid-way at the kill


@dataclass
class Crashy:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path
    cache: Path
    triton_ports: tuple[int, int, int]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crashy]:
    tmp = tmp_path_factory.mktemp("crashy")
    ports = (free_port(), free_port(), free_port())
    proc, port, log = start_gateway(
        tmp,
        "--triton-http-port", str(ports[0]),
        "--triton-grpc-port", str(ports[1]),
        "--triton-metrics-port", str(ports[2]),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/ready", proc, 240, log)
    yield Crashy(base, proc, log, tmp / "cache", ports)
    code = stop(proc)
    text = log.read_text(errors="replace")
    assert code == 0, text[-4000:]
    assert not any(port_open(p) for p in ports), "tritonserver outlived the gateway"
    assert "Traceback" not in text
    assert "stopped answering" not in text  # probed all along (every 10 s), a live Triton is never taken for hung


@dataclass
class Outcome:
    status: int = 0
    first_event: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[object] = field(default_factory=list)


async def stream(session: aiohttp.ClientSession, url: str, outcome: Outcome) -> None:
    body = {
        "model": "synthetic",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "ignore_eos": True,
    }
    async with session.post(url, json=body) as resp:
        outcome.status = resp.status
        raw = b""
        async for chunk in resp.content.iter_any():
            raw += chunk
            if b"\n\n" in raw:
                outcome.first_event.set()
        outcome.first_event.set()
    if outcome.status == 200:
        outcome.events = parse_sse(raw)


def ended_in_band_or_refused(outcome: Outcome) -> bool:
    if outcome.status == 503:
        return True
    last = outcome.events[-1] if outcome.events else None
    if last == "[DONE]" and len(outcome.events) > 1:
        last = outcome.events[-2]
    return outcome.status == 200 and isinstance(last, dict) and "error" in last


async def ready_status(base: str) -> int:
    try:
        async with aiohttp.ClientSession() as session, session.get(base + "/ready") as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


async def wait_ready_again(crashy: Crashy, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while await ready_status(crashy.base_url) != 200:
        assert crashy.process.poll() is None, crashy.log_text()[-4000:]
        if time.monotonic() > deadline:
            pytest.fail(f"/ready not 200 within {within}s:\n{crashy.log_text()[-4000:]}")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
async def test_triton_killed_under_load_is_restarted(crashy: Crashy, sig: signal.Signals) -> None:
    await wait_ready_again(crashy)  # after the previous test's crash too
    gateway = crashy.process.pid
    [old] = tritonservers(gateway)
    restarted_before = crashy.log_text().count("tritonserver restarted")
    url = crashy.base_url + "/v1/chat/completions"
    outcomes = [Outcome() for _ in range(STREAMS)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        tasks = [asyncio.create_task(stream(session, url, o)) for o in outcomes]
        await asyncio.wait_for(asyncio.gather(*(o.first_event.wait() for o in outcomes)), 60)
        assert all(o.status == 200 for o in outcomes)
        os.kill(old, sig)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert all(ended_in_band_or_refused(o) for o in outcomes), [(o.status, o.events[-2:]) for o in outcomes]

    # the death is logged with how it died, then the restart; /ready turns 200 again and requests succeed
    await until(lambda: f"tritonserver exited unexpectedly (pid {old}, killed by {sig.name})" in crashy.log_text(), 60,
                "the death logged")  # fmt: skip
    await until(lambda: crashy.log_text().count("tritonserver restarted") > restarted_before, 120, "the restart logged")
    await wait_ready_again(crashy)
    async with aiohttp.ClientSession() as session:
        body = {"model": "synthetic", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}
        async with session.post(url, json=body) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["usage"]["completion_tokens"] == 8
        async with session.get(crashy.base_url + "/metrics") as resp:
            assert "gateway_triton_restarts_total" in await resp.text()

    # the old Triton is reaped (gone, not <defunct>), and only the new one and its stubs run
    [new] = tritonservers(gateway)
    assert new != old
    assert stat_of(old) is None or stat_of(old)[0] != "tritonserver"  # type: ignore[index]
    assert not [p for p in children(gateway) if (s := stat_of(p)) is not None and s[1] == "Z"]

    def only_the_new_triton_and_its_stubs() -> bool:
        left = processes_mentioning(str(crashy.cache), besides=gateway)
        return all(pid == new or ((s := stat_of(pid)) is not None and s[2] == new) for pid in left)

    await until(only_the_new_triton_and_its_stubs, 30, "no process of the killed Triton left")


def test_the_liveness_probe_is_answered_by_a_live_triton(crashy: Crashy) -> None:
    """A 1-token generation on the synthetic model, streamed to its end."""
    assert generation_probe(f"127.0.0.1:{crashy.triton_ports[1]}") is None
    refused = generation_probe(f"127.0.0.1:{crashy.triton_ports[1]}", model="nosuch")
    assert refused is not None and refused.startswith("the model answered an error:") and "nosuch" in refused


def test_single_process_gateway_port_is_not_shared(crashy: Crashy) -> None:
    """Only the gateway's own workers share a port: a second server using SO_REUSEPORT cannot bind it."""
    port = int(crashy.base_url.rsplit(":", 1)[1])
    with socket.socket() as intruder:
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError) as err:
            intruder.bind(("127.0.0.1", port))
    assert err.value.errno == errno.EADDRINUSE


def run_to_the_end(tmp_path: Path, binary: Path, *extra: str) -> tuple[int, str]:
    """A gateway launching ``binary`` as its tritonserver, run until it exits: its exit status and log."""
    proc, _, log = start_gateway(
        tmp_path,
        "--tritonserver", str(binary),
        "--triton-http-port", str(free_port()),
        "--triton-grpc-port", str(free_port()),
        "--triton-metrics-port", str(free_port()),
        *extra,
    )  # fmt: skip
    try:
        code = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log.read_text(errors="replace")


def test_gives_up_and_exits_1_when_triton_keeps_dying(tmp_path: Path) -> None:
    # each stand-in dies 2 s after its first ready answer: start-up (however slow) is over by then
    binary = stand_in(tmp_path / "standin", after_ready=2.0)
    code, text = run_to_the_end(tmp_path, binary, "--triton-max-restarts", "2", "--triton-liveness-interval", "0")
    assert code == 1, text[-4000:]
    assert "tritonserver exited unexpectedly (pid" in text and "exited with code 3" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("[gateway] error: tritonserver") and "3 failures in 300s" in last and "giving up" in last
    assert "--triton-max-restarts" in last
    assert "Traceback" not in text
    assert not processes_mentioning(str(tmp_path / "standin"), besides=os.getpid())


def test_a_hung_triton_is_killed_restarted_and_given_up_on(tmp_path: Path) -> None:
    # ready over HTTP and gRPC, but no stream is ever answered (as Triton 2.51 deadlocked in its stream handler)
    binary = stand_in(tmp_path / "standin", hung=True)
    code, text = run_to_the_end(
        tmp_path, binary,
        "--triton-max-restarts", "1",
        "--triton-liveness-interval", "1",
        "--triton-liveness-failures", "2",
    )  # fmt: skip
    assert code == 1, text[-4000:]
    killed = [line for line in text.splitlines() if "; killing it" in line]
    assert len(killed) == 2, text[-4000:]
    assert all(
        "tritonserver stopped answering (pid" in line and "2 failed liveness probes in a row" in line
        and "no answer within 1s" in line
        for line in killed
    ), killed  # fmt: skip
    assert text.count("tritonserver restarted (pid") == 1
    assert "exited unexpectedly" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("[gateway] error: tritonserver stopped answering") and "2 failures in 300s" in last
    assert "Traceback" not in text
    assert not processes_mentioning(str(tmp_path / "standin"), besides=os.getpid())
