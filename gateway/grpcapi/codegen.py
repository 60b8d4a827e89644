"""Build the Python gRPC stubs from protos/ with grpcio-tools (never committed, never hand-edited).

``make`` runs it (``python -m gateway.grpcapi.codegen``); :mod:`gateway.grpcapi.stubs` also runs
it when the stubs are missing or older than their .proto, so a clean clone works either way.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent.parent / "protos"
OUT = Path(__file__).resolve().parent.parent / "_generated"

log = logging.getLogger(__name__)


def _tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def _stale(proto: Path) -> bool:
    stamp = OUT / ".grpcio-tools-version"
    if not stamp.is_file() or stamp.read_text() != _tools_version():
        return True  # stubs from another protoc may not load with this protobuf runtime
    rel = proto.relative_to(PROTO_ROOT).with_suffix("")
    outputs = [OUT / f"{rel}_pb2.py", OUT / f"{rel}_pb2_grpc.py", OUT / f"{rel}_pb2.pyi"]
    newest_input = proto.stat().st_mtime
    return any(not o.is_file() or o.stat().st_mtime < newest_input for o in outputs)


def generate(force: bool = False) -> list[Path]:
    """Compile every stale .proto under protos/; returns the protos compiled."""
    if not PROTO_ROOT.is_dir():  # an installed package ships the stubs, not the protos
        return []
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    todo = [p for p in protos if force or _stale(p)]
    if not todo:
        return []
    import grpc_tools
    from grpc_tools import protoc

    includes = Path(grpc_tools.__file__).parent / "_proto"
    OUT.mkdir(parents=True, exist_ok=True)
    for proto in todo:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{includes}",
            f"--python_out={OUT}",
            f"--pyi_out={OUT}",
            f"--grpc_python_out={OUT}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {proto}")
        log.info("generated stubs for %s", proto.relative_to(PROTO_ROOT))
    for directory in [OUT, *(p for p in OUT.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        (directory / "__init__.py").touch()
    (OUT / ".grpcio-tools-version").write_text(_tools_version())
    return todo


if __name__ == "__main__":
    done = generate(force="--force" in sys.argv)
    print(f"[gateway] gRPC stubs: {len(done)} proto(s) compiled into {OUT}", file=sys.stderr)
