"""Start and stop the whole stack for a benchmark, and read a process's CPU time."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.config import REPO_ROOT

_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` itself (0 when pid is 0 or gone)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def wake_cost_us(wakes: int = 200, interval: float = 0.005) -> float:
    """CPU microseconds one wake-up of an otherwise idle process costs on this machine.

    At low load a streaming process is woken once per token, so its CPU per token can be no lower
    than this, whatever it does when awake (on the 2-core development VM, 30 to 200 µs, varying from
    run to run).
    """
    cpu0 = time.process_time()
    for _ in range(wakes):
        time.sleep(interval)
    return (time.process_time() - cpu0) / wakes * 1e6


@dataclass
class Stack:
    gateway: str
    triton: str
    grpc: str  # the gateway's gRPC API
    pid: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def launch_stack(timeout: float = 240.0, log: Path | None = None, env: dict[str, str] | None = None) -> Stack:
    """`python -m gateway serve` (gateway + embedded Triton) on free loopback ports, with ``env`` added to its
    environment (e.g. ``PYTHONSAFEPATH=1 PYTHONPATH=<a worktree>`` runs another revision's stack)."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    args = ["--triton-http-port", str(http), "--triton-grpc-port", str(grpc), "--triton-metrics-port", str(metrics)]
    return _launch(args, f"127.0.0.1:{grpc}", env or {}, timeout, log or REPO_ROOT / "perf" / "results" / "stack.log")


def launch_gateway(
    triton: str, model: str, triton_model: str, env: dict[str, str], log: Path, timeout: float = 120.0
) -> Stack:
    """One more gateway, on free ports, in front of a running Triton, with ``env`` added to its environment."""
    tokenizer = REPO_ROOT / "model_repository" / "smollm2" / "weights"
    args = [
        "--triton-url",
        triton,
        "--triton-model",
        triton_model,
        "--model-id",
        model,
        "--tokenizer-dir",
        str(tokenizer),
    ]
    return _launch(args, triton, env, timeout, log)


def _launch(args: list[str], triton: str, env: dict[str, str], timeout: float, log: Path) -> Stack:
    port, api = free_port(), free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--grpc-port", str(api), *args]
    shown = " ".join(f"{k}={v!r}" for k, v in env.items())
    print(f"[bench] starting {shown} {' '.join(cmd)} (log: {log})", file=sys.stderr, flush=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, timeout, log, "the stack")
    return Stack(url, triton, f"127.0.0.1:{api}", proc.pid, proc)


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path, what: str) -> None:
    """Until ``url``/ready answers 200; ``proc`` killed and SystemExit when it exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit(f"{what} was not ready after {timeout}s; see {log}")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed (as the gateway runs): a load generator's own CPU is what it shares with the stack."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def positive_ints(text: str) -> list[int]:
    """An argparse type: ``1,8,32`` -> [1, 8, 32]."""
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, not {text!r}")
    return values


@dataclass(frozen=True, slots=True)
class Target:
    """The stack a benchmark measures: its gateway URL, its Triton's gRPC address, the gateway's pid (0: unknown)."""

    gateway: str
    triton: str
    pid: int


@contextmanager
def stack_or_running(launch: bool, gateway: str, triton: str, gateway_pid: int, log: Path) -> Iterator[Target]:
    """With ``launch``, a stack of its own on free ports (with its own cache dir: its Triton log and
    backend dir apart from other stacks'), stopped and cleaned up afterwards; else the running one
    given, its gateway's pid found from its port when not given."""
    stack: Stack | None = None
    cache: str | None = None
    try:
        if launch:
            if "GATEWAY_CACHE_DIR" not in os.environ:
                cache = tempfile.mkdtemp(prefix=f"{log.stem}-cache-")
                os.environ["GATEWAY_CACHE_DIR"] = cache
            stack = launch_stack(log=log)
            gateway, triton, gateway_pid = stack.gateway, stack.triton, stack.pid
        from perf.churn_sampler import listener_pid  # it imports this module's process helpers

        pid = gateway_pid or listener_pid(urlsplit(gateway).port or 80) or 0
        yield Target(gateway, triton, pid)
    finally:
        if stack is not None:
            stack.stop()
        if cache is not None:
            os.environ.pop("GATEWAY_CACHE_DIR", None)
            shutil.rmtree(cache, ignore_errors=True)


def save_results(
    args: argparse.Namespace,
    stem: str,
    result: dict[str, Any],
    started: float,
    plot: Callable[[dict[str, Any], Path], Path],
    table: Callable[[dict[str, Any]], str],
) -> tuple[dict[str, Any], str]:
    """A benchmark's ending: its arguments, the machine's CPU count and the elapsed time added to
    ``result``, written to ``<args.out>/<stem>.json`` and plotted to ``<stem>.png``, the table printed.
    Returns the result and the line that names the files."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result = {"config": config, "cpus": os.cpu_count(), **result, "elapsed_s": time.monotonic() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    json_path.write_text(json.dumps(result, indent=2))
    plot(result, png_path)
    print(table(result))
    return result, f"\nwrote {json_path}, {png_path} ({result['elapsed_s']:.0f}s in all)"


@contextmanager
def worktree(rev: str, path: Path) -> Iterator[Path]:
    """``rev`` checked out (detached) at ``path``, removed afterwards; this checkout's branch and index untouched."""
    git = ["git", "-C", str(REPO_ROOT)]
    if path.exists():
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([*git, "worktree", "prune"], check=False, capture_output=True)
    print(f"[bench] git worktree add --detach {path} {rev}", file=sys.stderr, flush=True)
    subprocess.run([*git, "worktree", "add", "--detach", str(path), rev], check=True, capture_output=True)
    try:
        yield path
    finally:
        print(f"[bench] git worktree remove --force {path}", file=sys.stderr, flush=True)
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False, capture_output=True)


def ref_env(tree: Path, cache: Path) -> dict[str, str]:
    """The environment that makes ``python -m gateway`` run the worktree's code (not this checkout's)."""
    return {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(tree), "GATEWAY_CACHE_DIR": str(cache)}


def parse_compare(spec: str, parser: argparse.ArgumentParser) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE[,KEY=VALUE]`` (--compare): a gateway's name and the environment it is launched with."""
    name, _, assignments = spec.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if "=" in a)
    if not name or "@" in name or not env:
        parser.error(f"--compare {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    return name, env


@contextmanager
def floor_server(triton: str, triton_model: str, ids: list[int], tokens: int, log: Path) -> Iterator[tuple[str, int]]:
    """perf/floor.py (the transport floor) on a free port in front of ``triton``, sending prompt ``ids``
    for ``tokens`` tokens: (its URL, its pid)."""
    port = free_port()
    cmd = [sys.executable, "-m", "perf.floor", "--port", str(port), "--triton", triton, "--model", triton_model]
    cmd += ["--tokens", str(tokens), "--ids", ",".join(map(str, ids))]
    print(f"[bench] starting the transport floor: {' '.join(cmd[:-2])} (log: {log})", file=sys.stderr, flush=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url, 60.0, log, "perf.floor")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)
