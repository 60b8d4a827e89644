"""Keep a launched tritonserver up: reap it when it dies, restart it with backoff, give up if it keeps dying.

The supervisor is a daemon thread of the process that launched Triton, so it works the same whether
that process serves requests itself or only waits for ``--workers`` processes. While Triton is down
the gateway's own health checks turn /ready 503 and streams in flight end with an error; once Triton
is ready again on the same ports, the gateway's channels reconnect and /ready turns 200.

A Triton can also hang: alive and "ready", but answering no stream. Given a ``probe`` (see
:mod:`gateway.embedded.liveness`), the supervisor runs it every ``liveness_interval`` seconds while
Triton runs; ``liveness_failures`` failed probes in a row and it SIGKILLs Triton, which then restarts
as if it had died.

More than ``max_restarts`` failures (deaths, hangs or failed restarts) within ``window`` seconds and it
gives up: ``on_give_up`` is called once, with a one-line reason, to make the process exit non-zero so that
whatever runs the gateway (systemd, Kubernetes) restarts the whole of it.

A child launched with ``PR_SET_PDEATHSIG`` is killed when the *thread* that launched it ends, not the
process. So this thread, which launches every restarted Triton, lives until :meth:`close` and stops
Triton itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.embedded.liveness import Liveness, Probe
from gateway.embedded.tritonserver import TritonLaunchError, describe_exit
from gateway.observability.metrics import TRITON_RESTARTS

log = logging.getLogger(__name__)


class Supervised(Protocol):
    """What the supervisor needs of a server (:class:`~gateway.embedded.tritonserver.TritonServer`)."""

    @property
    def running(self) -> bool: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def returncode(self) -> int | None: ...
    def log_excerpt(self, lines: int = 30) -> str: ...
    def start(self) -> None: ...
    def wait_ready(
        self, timeout: float = ..., progress: Callable[[str], None] | None = ..., abort: threading.Event | None = ...
    ) -> None: ...
    def kill(self) -> None: ...
    def stop(self, timeout: float = ...) -> None: ...


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5  # failures allowed within the window; one more and it gives up
    window: float = 300.0  # seconds
    first_delay: float = 0.5  # seconds before the first restart, doubling with each failure in the window
    max_delay: float = 10.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before restarting after the ``failures``-th failure in the window."""
        return float(min(self.first_delay * 2 ** max(failures - 1, 0), self.max_delay))


class TritonSupervisor:
    def __init__(
        self,
        server: Supervised,
        policy: RestartPolicy,
        on_give_up: Callable[[str], None],
        poll: float = 0.25,
        ready_timeout: float = 180.0,
        clock: Callable[[], float] = time.monotonic,
        probe: Probe | None = None,
        liveness_interval: float = 10.0,
        liveness_failures: int = 3,
    ) -> None:
        """``probe``: a liveness probe of the running server (None: only its exit is watched)."""
        self._server = server
        self._policy = policy
        self._on_give_up = on_give_up
        self._poll = poll
        self._ready_timeout = ready_timeout
        self._clock = clock
        self._liveness = None if probe is None else Liveness(probe, liveness_interval, liveness_failures)
        self._failures: deque[float] = deque()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
        self.gave_up: str | None = None  # the reason, once it has given up
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop supervising and stop Triton (from the supervisor's thread); no give-up can follow."""
        with self._lock:
            self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until supervision has ended (it gave up, failed or was closed); whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._supervise()
        except Exception as exc:  # a bug here must not leave a dead Triton looking supervised
            log.exception("the tritonserver supervisor failed")
            self._give_up(f"the tritonserver supervisor failed: {exc!r}")
        finally:
            if self._closing.is_set():
                self._server.stop()
            else:
                self._server.kill()

    def _supervise(self) -> None:
        while True:
            down = self._watch()
            if down is None:
                return
            what, excerpt = down
            down_since = self._clock()
            while True:
                failures = self._failed()
                quoted = f"\n{excerpt}" if excerpt else ""  # the log's lines, when there is a log
                if failures > self._policy.max_restarts:
                    log.error("%s%s", what, quoted)
                    self._give_up(
                        f"{what}: {failures} failures in {self._policy.window:.0f}s,"
                        f" more than the {self._policy.max_restarts} restarts allowed; giving up"
                    )
                    return
                delay = self._policy.delay(failures)
                log.warning(
                    "%s; restarting it in %.1fs (failure %d of %d allowed in %.0fs)%s",
                    what,
                    delay,
                    failures,
                    self._policy.max_restarts,
                    self._policy.window,
                    quoted,
                )
                if self._closing.wait(delay):
                    return
                try:
                    self._server.start()
                    self._server.wait_ready(self._ready_timeout, abort=self._closing)
                except (TritonLaunchError, OSError) as exc:  # OSError: Popen, the log, the backend directory
                    if self._closing.is_set():
                        return
                    self._server.kill()
                    what, _, excerpt = str(exc).partition("\n")
                    what = f"tritonserver restart failed: {what}"
                    continue
                break
            self.restarts += 1
            TRITON_RESTARTS.inc()
            log.warning(
                "tritonserver restarted (pid %s, ready %.1fs after it went down): serving again",
                self._server.pid,
                self._clock() - down_since,
            )

    def _watch(self) -> tuple[str, str] | None:
        """Wait while Triton runs (and answers, when probed); then why it stopped and its log excerpt.

        None once closing. A Triton found dead is reaped; one that stopped answering is killed.
        """
        liveness = self._liveness
        if liveness is not None:
            liveness.reset(self._clock())
        while self._server.running:
            if self._closing.wait(self._poll):
                return None
            if liveness is None or not liveness.due(self._clock()):
                continue
            problem = liveness.probe()
            if self._closing.is_set():
                return None
            if not self._server.running:
                break  # it died: that, not the probe, is what failed
            verdict = liveness.record(problem, self._clock())
            if verdict is None:
                if problem is not None:
                    log.warning(
                        "tritonserver did not answer a liveness probe (%d of %d in a row): %s",
                        liveness.failed,
                        liveness.failures,
                        problem,
                    )
                continue
            what = f"tritonserver stopped answering (pid {self._server.pid}, {verdict})"
            excerpt = self._server.log_excerpt(15)
            log.error("%s; killing it", what)
            self._server.kill()
            return what, excerpt
        pid, code = self._server.pid, self._server.returncode
        excerpt = self._server.log_excerpt(15)
        self._server.kill()  # already reaped by the poll; this ends backend stubs left in its session
        return f"tritonserver exited unexpectedly (pid {pid}, {describe_exit(code)})", excerpt

    def _failed(self) -> int:
        """Count one failure; the failures within the window."""
        now = self._clock()
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self._policy.window:
            self._failures.popleft()
        return len(self._failures)

    def _give_up(self, reason: str) -> None:
        with self._lock:
            if self._closing.is_set() or self.gave_up is not None:
                return
            self.gave_up = reason
            self._on_give_up(reason)
