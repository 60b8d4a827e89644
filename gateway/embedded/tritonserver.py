"""Run the `tritonserver` binary shipped in the ``nvidia-pytriton`` wheel (or a system install).

The Python backend needs three things the wheel does not arrange by itself: a backend directory
holding ``libtriton_python.so`` with the stub built for *our* Python beside it, the wheel's bundled
shared libraries (and our Python's libdir) on ``LD_LIBRARY_PATH``, and the virtualenv's ``bin`` first
on ``PATH`` (the stub takes its interpreter from ``PATH``, not ``PYTHONPATH``).

The server is bound to 127.0.0.1, started in its own session, killed with the launcher if the
launcher dies (``PR_SET_PDEATHSIG``), and stopped with SIGTERM then SIGKILL on :meth:`stop`. It is
ready when it answers ready over HTTP *and* (on Linux) the sockets listening on its three ports are
its own: another server on one of them would otherwise answer in its place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.embedded.ports import foreign_or_unbound
from gateway.procutil import launch_dying_with_parent

log = logging.getLogger(__name__)


class TritonLaunchError(RuntimeError):
    """tritonserver could not be found, started or made ready."""


@dataclass(frozen=True)
class TritonPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def _pytriton_dir() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def find_tritonserver(explicit: str | None = None) -> Path:
    """An explicit path, then ``$TRITONSERVER``, then the wheel's binary, then ``PATH``."""
    candidates: list[Path] = []
    for value in (explicit, os.environ.get("TRITONSERVER")):
        if value:
            candidates.append(Path(value))
    wheel = _pytriton_dir()
    if wheel is not None:
        candidates.append(wheel / "bin" / "tritonserver")
    on_path = shutil.which("tritonserver")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise TritonLaunchError(
        "tritonserver not found: install nvidia-pytriton (make install) or set TRITONSERVER=/path/to/tritonserver"
    )


def assemble_backends(binary: Path, cache_dir: Path) -> Path:
    """A backend directory whose ``python`` backend has the stub for the running Python."""
    root = binary.parent.parent
    system_backends = root / "backends"
    stubs = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    if not stubs.is_dir():
        # a system install (NVIDIA's container) ships a complete backend directory already
        if (system_backends / "python" / "triton_python_backend_stub").is_file():
            return system_backends
        raise TritonLaunchError(f"no Python backend stub for Python {sys.version_info[:2]} under {root}")
    target = cache_dir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in (
        system_backends / "python" / "libtriton_python.so",
        system_backends / "python" / "triton_python_backend_utils.py",
        stubs / "triton_python_backend_stub",
    ):
        dst = target / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return target.parent


def server_env(binary: Path) -> dict[str, str]:
    env = dict(os.environ)
    libs = [binary.parent.parent.parent.parent / "nvidia_pytriton.libs"]  # site-packages/nvidia_pytriton.libs
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        libs.append(Path(libdir))
    base_libdir = Path(sys.base_prefix) / "lib"
    libs.append(base_libdir)
    existing = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(p) for p in libs if p.is_dir()] + existing)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    return env


class TritonServer:
    """One tritonserver child process."""

    def __init__(
        self,
        model_repository: Path,
        cache_dir: Path,
        ports: TritonPorts = TritonPorts(),
        binary: str | None = None,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        models: tuple[str, ...] = (),
        explicit: bool = False,
    ) -> None:
        """``models``: load only these (explicit model control); empty: every model in the repository,
        unless ``explicit``: explicit model control with no model loaded (loads come over gRPC)."""
        self.model_repository = model_repository.resolve()
        self.cache_dir = cache_dir
        self.ports = ports
        self.host = host
        self.binary = find_tritonserver(binary)
        self.extra_args = extra_args
        self.models = models
        self.explicit = explicit
        self.log_path = cache_dir / "tritonserver.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where the current run's log begins (a restart appends to the log)
        self._started = False

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    def command(self, backends: Path) -> list[str]:
        return [
            str(self.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-cpu-metrics=false",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=5",
            *self._model_control(),
            *self.extra_args,
        ]

    def _model_control(self) -> list[str]:
        if not self.models and not self.explicit:
            return []
        return ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Launch it (again: a restart keeps the earlier runs' log above the new one)."""
        try:
            self._launch()
        except OSError as exc:  # the cache directory, the backend directory, the log, exec
            raise TritonLaunchError(f"cannot start tritonserver: {exc}") from exc

    def _launch(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        backends = assemble_backends(self.binary, self.cache_dir)
        cmd, preexec = launch_dying_with_parent(self.command(backends))
        log.info("starting tritonserver: %s", " ".join(cmd))
        mode = "ab" if self._started else "wb"
        self._started = True
        with open(self.log_path, mode) as log_file:
            self._log_offset = log_file.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(self.binary),
                start_new_session=True,  # Ctrl-C reaches us; we stop Triton in order
                preexec_fn=preexec,  # noqa: PLW1509 - only without setpriv (util-linux); one prctl call
            )

    def wait_ready(
        self,
        timeout: float = 180.0,
        progress: Callable[[str], None] | None = None,
        abort: threading.Event | None = None,
    ) -> None:
        """Block until this Triton answers ready on ports it alone listens on; on failure quote its log.

        ``abort`` set: give up at once (TritonLaunchError), leaving the process to :meth:`stop`.
        """
        deadline = time.monotonic() + timeout
        last_note = 0.0
        problems: list[str] = []
        while True:
            if self._http_ready():
                problems = self.foreign_ports()
                if not problems and self.running:  # alive after ready: the answer was its own
                    return
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise TritonLaunchError(f"tritonserver {describe_exit(code)}\n{self.log_excerpt()}")
            now = time.monotonic()
            if now > deadline:
                self.stop()
                why = f" ({'; '.join(problems)})" if problems else ""
                raise TritonLaunchError(f"tritonserver not ready after {timeout:.0f}s{why}\n{self.log_excerpt()}")
            if progress and now - last_note > 5:
                progress(f"waiting for tritonserver ({int(deadline - now)}s left)")
                last_note = now
            if abort is None:
                time.sleep(0.2)
            elif abort.wait(0.2):
                raise TritonLaunchError("tritonserver start-up aborted")

    def foreign_ports(self) -> list[str]:
        """Reasons to doubt that this Triton alone answers on its ports: [] when none (or where /proc cannot tell)."""
        if self._proc is None:
            return ["tritonserver not running"]
        ports = (self.ports.http, self.ports.grpc, self.ports.metrics)
        return foreign_or_unbound(ports, self.host, self._proc.pid) or []

    def _http_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_excerpt(self, lines: int = 30) -> str:
        """The error lines (or else the last lines) of the current run's log."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self._log_offset)
                text = log_file.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no tritonserver log)"
        errors = [line for line in text if " E" in line[:2] or "error" in line.lower() or "failed" in line.lower()]
        picked = errors[-lines:] if errors else text[-lines:]
        return f"--- tritonserver log ({self.log_path}) ---\n" + "\n".join(picked)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (reaped), as subprocess gives it: -N for signal N."""
        return None if self._proc is None else self._proc.poll()

    def kill(self) -> None:
        """SIGKILL Triton and its model processes at once, as a crash would (no drain); start() may follow."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _kill_session(proc)

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            log.info("stopping tritonserver (pid %d)", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0fs; killing it", timeout)
        _kill_session(proc)


def describe_exit(code: int | None) -> str:
    """'exited with code 1', 'killed by SIGSEGV', for log lines."""
    if code is None:
        return "is not running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL Triton's whole session (with any Python-backend stub that outlived it) and reap Triton."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
