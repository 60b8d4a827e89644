"""``--workers N``: N gateway processes sharing the REST and gRPC ports (SO_REUSEPORT).

Only the gateway's own workers share a port: :func:`ports_shared` is true in them alone, so a
single gateway binds its ports exclusively and a second one started on the same port fails.

Each worker has its own event loop and Triton channels. What must be
shared lives on the machine: rate-limit state in a SQLite file, Prometheus samples in a
multiprocess directory (so /metrics on any worker reports all of them). The supervisor forwards
SIGTERM (drain) and SIGINT to the workers, waits for them, and only then returns, so a Triton it
launched is stopped last.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.observability import logs
from gateway.procutil import die_with_parent

log = logging.getLogger(__name__)

SHARED_PORTS_ENV = "GATEWAY_WORKERS_SHARE_PORTS"  # set by supervise() for the workers it starts


def ports_shared() -> bool:
    """Whether this process is one of several workers that bind the same ports (SO_REUSEPORT)."""
    return os.environ.get(SHARED_PORTS_ENV) == "1"


def run_worker(config_json: str, log_level: str) -> None:
    """One worker process: the app on the shared ports until a signal."""
    die_with_parent()
    logs.setup(log_level, logs.WORKER_FORMAT)
    from gateway.api.app import create_app
    from gateway.api.run import run, serve

    run(serve(create_app(GatewayConfig.model_validate_json(config_json))))


def supervise(config: GatewayConfig, workers: int, log_level: str) -> int:
    """Run ``workers`` processes; returns when all have exited (0 if every one exited 0)."""
    runtime = Path(tempfile.mkdtemp(prefix="gateway-workers-"))
    metrics_dir = runtime / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # inherited by the workers
    os.environ[SHARED_PORTS_ENV] = "1"
    shared = config.model_copy(update={"limits_db": config.limits_db or runtime / "limits.db"})
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=run_worker, args=(shared.model_dump_json(), log_level), name=f"gateway-worker-{i}")
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()

    def forward(signum: int, _frame: Any) -> None:
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for proc in procs:
            proc.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(runtime, ignore_errors=True)
    codes = [proc.exitcode for proc in procs]
    log.info("workers exited: %s", codes)
    return 0 if all(code == 0 for code in codes) else 1
