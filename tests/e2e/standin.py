"""A stand-in `tritonserver` for start-up and supervision tests (no model; it dies when told to), and a
look at which processes run."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = """#!{python}
import http.server, os, socket, sys, threading, time

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
host = args["http-address"]
held = []


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


if {serve}:  # bind the three ports as Triton does and answer ready
    for key in ("grpc-port", "metrics-port"):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(args[key])))
        s.listen()
        held.append(s)
    server = http.server.HTTPServer((host, int(args["http-port"])), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("stand-in ready", flush=True)
time.sleep({lifetime})
print({last_words!r}, flush=True)
os._exit({code})
"""


def stand_in(
    directory: Path, lifetime: float = 1e9, serve: bool = True, code: int = 3, last_words: str = "stand-in dying"
) -> Path:
    """A `tritonserver` laid out as a system install (bin/, backends/python/), which the launcher accepts.

    ``serve``: bind the HTTP, gRPC and metrics ports and answer ready; either way, exit with ``code``
    after ``lifetime`` seconds, printing ``last_words`` to its log.
    """
    binary = directory / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    (directory / "backends" / "python").mkdir(parents=True)
    (directory / "backends" / "python" / "triton_python_backend_stub").write_bytes(b"")
    script = SCRIPT.format(python=sys.executable, serve=serve, lifetime=lifetime, code=code, last_words=last_words)
    binary.write_text(script)
    binary.chmod(0o755)
    return binary


def processes_mentioning(text: str, besides: int) -> dict[int, str]:
    """Running processes (but ``besides``) whose command line mentions ``text``: pid -> command line."""
    found = {}
    for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()):
        if pid == besides:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found[pid] = cmdline[:160]
    return found
