"""A stand-in `tritonserver` for start-up and supervision tests (no model; it dies or hangs when told
to), the readiness answer it gives, and a look at which processes run (/proc).

The stand-in is a script that imports this module and calls :func:`run`, so its behaviour is written
here as ordinary code. It imports nothing outside the standard library, unless it is to hang on gRPC.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """#!{python}
import json, sys
sys.path.insert(0, {repo!r})
from tests.e2e.standin import Behaviour, run
run(sys.argv[1:], Behaviour(**json.loads({behaviour!r})))
"""


class ReadyServer(http.server.ThreadingHTTPServer):
    """Answers 200 to every GET, as Triton's /v2/health/ready does; ``answered`` is set once it has."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, Ready)
        self.answered = threading.Event()


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if isinstance(self.server, ReadyServer):
            self.server.answered.set()  # the answer is sent (the handler writes unbuffered)

    def log_message(self, *_: object) -> None:
        pass


@dataclass(frozen=True)
class Behaviour:
    serve: bool = True  # bind the HTTP, gRPC and metrics ports as Triton does and answer ready over HTTP
    hung: bool = False  # on the gRPC port, ServerReady says ready and ModelStreamInfer never answers
    lifetime: float | None = None  # exit this long after starting (None: never)
    after_ready: float | None = None  # exit this long after the first ready answer (instead of lifetime)
    code: int = 3  # the exit status
    last_words: str = "stand-in dying"  # printed to its log as it exits


def stand_in(
    directory: Path,
    lifetime: float | None = None,
    serve: bool = True,
    code: int = 3,
    last_words: str = "stand-in dying",
    after_ready: float | None = None,
    hung: bool = False,
) -> Path:
    """A `tritonserver` laid out as a system install (bin/, backends/python/), which the launcher accepts.

    It behaves as :class:`Behaviour` says.
    """
    binary = directory / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    (directory / "backends" / "python").mkdir(parents=True)
    (directory / "backends" / "python" / "triton_python_backend_stub").write_bytes(b"")
    behaviour = Behaviour(serve, hung, lifetime, after_ready, code, last_words)
    binary.write_text(SCRIPT.format(python=sys.executable, repo=str(REPO), behaviour=json.dumps(asdict(behaviour))))
    binary.chmod(0o755)
    return binary


def run(argv: list[str], behaviour: Behaviour) -> None:
    """The stand-in's life, given tritonserver's command line."""
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    host = flags["http-address"]
    held: list[object] = []
    answered = threading.Event()
    if behaviour.serve:
        if behaviour.hung:
            held.append(_hung_grpc(host, int(flags["grpc-port"])))
        for key in ("metrics-port",) if behaviour.hung else ("grpc-port", "metrics-port"):
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, int(flags[key])))
            listener.listen()
            held.append(listener)
        server = ReadyServer((host, int(flags["http-port"])))
        answered = server.answered
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print("stand-in ready", flush=True)
    if behaviour.after_ready is not None:
        answered.wait()
        time.sleep(behaviour.after_ready)
    elif behaviour.lifetime is not None:
        time.sleep(behaviour.lifetime)
    else:
        threading.Event().wait()
    print(behaviour.last_words, flush=True)
    os._exit(behaviour.code)


def _hung_grpc(host: str, port: int) -> object:
    """A gRPC server as a deadlocked Triton is: ServerReady says ready, a stream is taken and never answered."""
    from concurrent import futures

    import grpc
    from tritonclient.grpc import service_pb2

    def server_ready(_request: Any, _context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    def stream_infer(_requests: Any, context: Any) -> Any:
        ended = threading.Event()
        context.add_callback(ended.set)  # the client gave up (its deadline)
        ended.wait()
        return iter(())

    handlers = {
        "ServerReady": grpc.unary_unary_rpc_method_handler(
            server_ready,
            request_deserializer=service_pb2.ServerReadyRequest.FromString,
            response_serializer=service_pb2.ServerReadyResponse.SerializeToString,
        ),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            stream_infer,
            request_deserializer=service_pb2.ModelInferRequest.FromString,
            response_serializer=service_pb2.ModelStreamInferResponse.SerializeToString,
        ),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        handlers=[grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers)],
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def stat_of(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    state, ppid = text[text.rindex(")") + 2 :].split()[:2]
    return comm, state, int(ppid)


def children(pid: int) -> list[int]:
    return [p for p in all_pids() if (s := stat_of(p)) is not None and s[2] == pid]


def tritonservers(parent: int) -> list[int]:
    """The children of ``parent`` named tritonserver."""
    return [p for p in children(parent) if (s := stat_of(p)) is not None and s[0] == "tritonserver"]


def processes_mentioning(text: str, besides: int) -> dict[int, str]:
    """Running processes (but ``besides``) whose command line mentions ``text``: pid -> command line."""
    found = {}
    for pid in all_pids():
        if pid == besides:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found[pid] = cmdline[:160]
    return found
