"""A SIGTERM that arrives while the app is still starting (a --workers process loading, a pod scaled down
at once) is kept and drained once the app is up: the process exits 0, never killed by the signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

SCRIPT = """
import asyncio, logging, sys
from pathlib import Path
from gateway.api.app import create_app
from gateway.api.run import serve
from gateway.config import GatewayConfig

logging.basicConfig(level="INFO")
marker = Path(sys.argv[1])

async def slow_startup(app):
    marker.write_text("starting")  # the test sends SIGTERM now, while this start-up step still runs
    await asyncio.sleep(3)

app = create_app(GatewayConfig(port=0, grpc_port=None, admin_api=False))
app.on_startup.append(slow_startup)
asyncio.run(serve(app))
"""


def test_a_sigterm_during_startup_is_drained_after_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(marker)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120  # a generous bound for the imports on a busy machine
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the app never began its start-up"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "SIGTERM: draining" in output and "drained" in output
