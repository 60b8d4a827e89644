"""The tritonserver supervisor against a stand-in server: restart with backoff, give up, close."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY as METRICS

from gateway.embedded.supervisor import RestartPolicy, TritonSupervisor
from gateway.embedded.tritonserver import TritonLaunchError, describe_exit

FAST = RestartPolicy(max_restarts=2, window=60.0, first_delay=0.01, max_delay=0.02)


class StandIn:
    """A server that dies when told to; ``failing_starts`` restarts fail before one succeeds."""

    def __init__(self, failing_starts: int = 0) -> None:
        self.alive = True
        self.pid_: int | None = 100
        self.code: int | None = None
        self.failing_starts = failing_starts
        self.starts = 0
        self.kills = 0
        self.stops = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self.alive

    @property
    def pid(self) -> int | None:
        return self.pid_

    @property
    def returncode(self) -> int | None:
        return None if self.alive else self.code

    def log_excerpt(self, lines: int = 30) -> str:
        return "--- tritonserver log ---\nlast words"

    def die(self, code: int = -9) -> None:
        self.code = code
        self.alive = False

    def start(self) -> None:
        with self._lock:
            self.starts += 1
            self.pid_ = 100 + self.starts

    def wait_ready(
        self,
        timeout: float = 180.0,
        progress: Callable[[str], None] | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        if self.failing_starts:
            self.failing_starts -= 1
            self.code = 1
            raise TritonLaunchError("tritonserver exited with code 1\n--- tritonserver log ---\nport in use")
        self.alive = True

    def kill(self) -> None:
        self.kills += 1
        self.alive = False

    def stop(self, timeout: float = 15.0) -> None:
        self.stops += 1
        self.alive = False


def wait_for(predicate: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        time.sleep(0.005)


@pytest.fixture
def given_up() -> list[str]:
    return []


@pytest.fixture
def supervised(given_up: list[str]) -> Iterator[Callable[[StandIn, RestartPolicy], TritonSupervisor]]:
    started: list[TritonSupervisor] = []

    def make(server: StandIn, policy: RestartPolicy = FAST) -> TritonSupervisor:
        supervisor = TritonSupervisor(server, policy, given_up.append, poll=0.005)
        supervisor.start()
        started.append(supervisor)
        return supervisor

    yield make
    for supervisor in started:
        supervisor.close(5)


def restarts_total() -> float:
    return METRICS.get_sample_value("gateway_triton_restarts_total") or 0.0


def test_a_dead_server_is_reaped_and_restarted(
    supervised: Callable[[StandIn, RestartPolicy], TritonSupervisor],
    given_up: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "gateway.embedded.supervisor")
    server = StandIn()
    before = restarts_total()
    supervisor = supervised(server, FAST)
    server.die(-11)
    wait_for(lambda: supervisor.restarts == 1, "a restart")
    assert server.alive and server.starts == 1 and server.kills == 1  # the dead one's session was killed (reaped)
    assert restarts_total() == before + 1
    messages = [r.getMessage() for r in caplog.records]
    died = next(m for m in messages if "tritonserver exited unexpectedly" in m)
    assert "pid 100, killed by SIGSEGV" in died and "last words" in died
    assert any("tritonserver restarted (pid 101" in m for m in messages)
    server.die()
    wait_for(lambda: supervisor.restarts == 2, "a second restart")
    assert not given_up


def test_it_gives_up_after_too_many_failures_in_the_window(
    supervised: Callable[[StandIn, RestartPolicy], TritonSupervisor], given_up: list[str]
) -> None:
    server = StandIn()
    supervisor = supervised(server, FAST)
    for restarts in (1, 2):
        server.die()
        wait_for(lambda r=restarts: supervisor.restarts == r, f"restart {restarts}")  # type: ignore[misc]
    server.die(-9)
    wait_for(lambda: bool(given_up), "giving up")
    assert len(given_up) == 1 and supervisor.gave_up == given_up[0]
    assert "killed by SIGKILL" in given_up[0] and "3 failures in 60s" in given_up[0]
    assert "\n" not in given_up[0]  # one line
    time.sleep(0.05)
    assert server.starts == 2  # no restart after giving up


def test_a_failed_restart_counts_as_a_failure(
    supervised: Callable[[StandIn, RestartPolicy], TritonSupervisor],
    given_up: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = StandIn(failing_starts=1)
    supervisor = supervised(server, FAST)
    server.die()
    wait_for(lambda: supervisor.restarts == 1, "a restart after a failed one")
    assert server.starts == 2
    assert any("tritonserver restart failed: tritonserver exited with code 1" in r.getMessage() for r in caplog.records)
    server.failing_starts = 5
    server.die()  # third failure in the window (death, failed restart, death): over max_restarts=2
    wait_for(lambda: bool(given_up), "giving up")
    assert "3 failures" in given_up[0]


def test_failures_older_than_the_window_are_forgotten(given_up: list[str]) -> None:
    now = [0.0]
    server = StandIn()
    policy = RestartPolicy(max_restarts=1, window=10.0, first_delay=0.0, max_delay=0.0)
    supervisor = TritonSupervisor(server, policy, given_up.append, poll=0.005, clock=lambda: now[0])
    supervisor.start()
    try:
        for restarts in (1, 2, 3):
            now[0] += 11.0
            server.die()
            wait_for(lambda r=restarts: supervisor.restarts == r, f"restart {restarts}")  # type: ignore[misc]
        server.die()  # second failure within 10 s
        wait_for(lambda: bool(given_up), "giving up")
    finally:
        supervisor.close(5)


def test_close_stops_the_server_and_never_gives_up(given_up: list[str]) -> None:
    server = StandIn(failing_starts=100)
    supervisor = TritonSupervisor(server, RestartPolicy(max_restarts=0), given_up.append, poll=0.005)
    supervisor.start()
    supervisor.close(5)
    assert server.stops == 1 and not given_up
    server.die()
    time.sleep(0.05)
    assert server.starts == 0 and not given_up


def test_restart_delay_doubles_up_to_a_limit() -> None:
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_exit_descriptions() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-11) == "killed by SIGSEGV"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(None) == "is not running"
