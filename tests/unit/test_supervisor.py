"""The tritonserver supervisor against a stand-in server: restart with backoff, give up, close; a hung
server (alive, but failing its liveness probes) killed and restarted."""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY as METRICS

from gateway.embedded.supervisor import RestartPolicy, TritonSupervisor
from gateway.embedded.tritonserver import TritonLaunchError, TritonServer, describe_exit

FAST = RestartPolicy(max_restarts=2, window=60.0, first_delay=0.01, max_delay=0.02)


class StandIn:
    """A server that dies when told to; ``failing_starts`` restarts fail before one succeeds, after the
    ``start_errors`` (raised by start, one each) are spent."""

    def __init__(self, failing_starts: int = 0, start_errors: tuple[Exception, ...] = ()) -> None:
        self.alive = True
        self.pid_: int | None = 100
        self.code: int | None = None
        self.failing_starts = failing_starts
        self.start_errors = list(start_errors)
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
        if self.start_errors:
            raise self.start_errors.pop(0)

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


class Probes:
    """A liveness probe that answers what the test says, one answer per call, blocking until it is given.

    While a call waits, the supervisor has dealt with every earlier answer: the test sees each step.
    """

    def __init__(self) -> None:
        self.calls = 0
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._called = threading.Condition()
        self._closed = False

    def __call__(self) -> str | None:
        with self._called:
            self.calls += 1
            self._called.notify_all()
        return None if self._closed else self._answers.get(timeout=30)

    def answer(self, problem: str | None, then_calls: int | None = None) -> None:
        """Answer the waiting call; then wait for call number ``then_calls`` (the answer has been dealt with)."""
        self._answers.put(problem)
        if then_calls is not None:
            self.wait_calls(then_calls)

    def wait_calls(self, n: int) -> None:
        with self._called:
            assert self._called.wait_for(lambda: self.calls >= n, 30), f"probe call {n} never came"

    def close(self) -> None:
        self._closed = True
        self._answers.put(None)


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
    assert supervisor.wait(30)  # supervision is over: no restart can follow
    assert server.starts == 2 and not server.alive


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


def test_an_os_error_while_restarting_counts_as_a_failed_restart(
    supervised: Callable[[StandIn, RestartPolicy], TritonSupervisor],
    given_up: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Popen, the log file or the backend directory failing: one counted failure and a retry, not the end
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone/bin/tritonserver")
    server = StandIn(start_errors=(missing, PermissionError(errno.EACCES, "Permission denied", "/cache/log")))
    supervisor = supervised(server, RestartPolicy(max_restarts=3, window=60.0, first_delay=0.01, max_delay=0.02))
    server.die()
    wait_for(lambda: supervisor.restarts == 1, "a restart after two failed ones")
    assert server.starts == 3 and server.alive and not given_up
    failed = [r.getMessage() for r in caplog.records if "tritonserver restart failed" in r.getMessage()]
    assert len(failed) == 2
    assert failed[0].startswith("tritonserver restart failed: [Errno 2] No such file or directory: '/gone/bin/")
    assert "(failure 2 of 3 allowed in 60s)" in failed[0] and "(failure 3 of 3" in failed[1]
    assert failed[0].endswith("60s)")  # no log excerpt to quote: nothing after the line


def test_an_os_error_on_every_restart_ends_in_giving_up(
    supervised: Callable[[StandIn, RestartPolicy], TritonSupervisor], given_up: list[str]
) -> None:
    server = StandIn(start_errors=tuple(OSError(errno.EMFILE, "Too many open files") for _ in range(5)))
    supervisor = supervised(server, FAST)
    server.die()
    wait_for(lambda: bool(given_up), "giving up")
    assert given_up[0].startswith("tritonserver restart failed: [Errno 24] Too many open files: 3 failures in 60s")
    assert supervisor.wait(30) and supervisor.restarts == 0


def test_an_os_error_starting_triton_is_a_launch_error(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "tritonserver"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache directory should be")
    server = TritonServer(tmp_path, cache, binary=str(binary))
    with pytest.raises(TritonLaunchError, match=r"^cannot start tritonserver: \[Errno 17\] File exists"):
        server.start()
    assert server.pid is None


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
    assert supervisor.wait(0)  # closed means over: nothing is restarted from here on
    assert server.stops == 1 and server.starts == 0 and not given_up


def test_restart_delay_doubles_up_to_a_limit() -> None:
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_exit_descriptions() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-11) == "killed by SIGSEGV"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(None) == "is not running"


HUNG = "no answer within 10s"


@pytest.fixture
def probes() -> Iterator[Probes]:
    probes = Probes()
    yield probes
    probes.close()


@pytest.fixture
def probed(given_up: list[str], probes: Probes) -> Iterator[Callable[[StandIn, RestartPolicy, int], TritonSupervisor]]:
    """A supervisor that probes its server on every poll (interval 0) with ``probes``."""
    started: list[TritonSupervisor] = []

    def make(server: StandIn, policy: RestartPolicy, failures: int) -> TritonSupervisor:
        supervisor = TritonSupervisor(
            server, policy, given_up.append, poll=0.005, probe=probes, liveness_interval=0.0, liveness_failures=failures
        )
        supervisor.start()
        started.append(supervisor)
        return supervisor

    yield make
    probes.close()
    for supervisor in started:
        supervisor.close(5)


def test_a_hung_server_is_killed_after_failures_in_a_row_and_restarted(
    probed: Callable[[StandIn, RestartPolicy, int], TritonSupervisor],
    probes: Probes,
    given_up: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = StandIn()
    supervisor = probed(server, FAST, 3)
    probes.wait_calls(1)
    for call, problem in enumerate([HUNG, HUNG, None, HUNG, HUNG], start=2):  # an answer clears the count
        probes.answer(problem, then_calls=call)
        assert server.kills == 0 and server.alive
    probes.answer(HUNG, then_calls=7)  # the third failure in a row: killed, restarted, probed again
    assert server.kills == 1 and server.starts == 1 and server.alive and supervisor.restarts == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "tritonserver did not answer a liveness probe (2 of 3 in a row): no answer within 10s" in messages
    killing = [m for m in messages if m.endswith("; killing it")]
    assert killing == [
        "tritonserver stopped answering (pid 100, 3 failed liveness probes in a row, the last: no answer within 10s);"
        " killing it"
    ]
    assert any(m.startswith("tritonserver stopped answering (pid 100") and "restarting it in" in m for m in messages)
    assert any("tritonserver restarted (pid 101" in m for m in messages)
    # the restarted server starts with a clean record: two more failures do not kill it
    probes.answer(HUNG, then_calls=8)
    probes.answer(HUNG, then_calls=9)
    assert server.kills == 1 and not given_up


def test_a_hang_counts_toward_giving_up(
    probed: Callable[[StandIn, RestartPolicy, int], TritonSupervisor], probes: Probes, given_up: list[str]
) -> None:
    server = StandIn()
    supervisor = probed(server, RestartPolicy(max_restarts=1, window=60.0, first_delay=0.01, max_delay=0.02), 1)
    probes.wait_calls(1)
    server.die(-11)  # a death: failure 1 of 1 allowed
    probes.answer(None, then_calls=2)  # the dead server's probe is not held against it: reaped and restarted
    assert supervisor.restarts == 1
    probes.answer(HUNG)  # a hang: failure 2, over the limit
    assert supervisor.wait(30)
    assert given_up == [
        "tritonserver stopped answering (pid 101, 1 failed liveness probe in a row, the last: no answer within 10s):"
        " 2 failures in 60s, more than the 1 restarts allowed; giving up"
    ]
    assert server.kills == 3 and not server.alive  # the dead one reaped, the hung one killed, then at the end


def test_a_server_that_dies_during_a_probe_has_died_not_hung(
    probed: Callable[[StandIn, RestartPolicy, int], TritonSupervisor],
    probes: Probes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = StandIn()
    supervisor = probed(server, FAST, 1)
    probes.wait_calls(1)
    server.die(-9)
    probes.answer("UNAVAILABLE: connection refused", then_calls=2)  # one failure would do: were it counted
    assert supervisor.restarts == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("tritonserver exited unexpectedly (pid 100, killed by SIGKILL)" in m for m in messages)
    assert not any("stopped answering" in m or "liveness probe" in m for m in messages)


def test_without_a_probe_nothing_is_probed(
    supervised: Callable[[StandIn, RestartPolicy], TritonSupervisor], probes: Probes
) -> None:
    server = StandIn()
    supervisor = supervised(server, FAST)
    server.die()
    wait_for(lambda: supervisor.restarts == 1, "a restart")
    assert probes.calls == 0
