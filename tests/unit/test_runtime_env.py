"""Process-level runtime choices: the gRPC core's experiments and the event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from gateway.api.run import run
from gateway.config import REPO_ROOT
from gateway.grpc_env import CLIENT_EXPERIMENTS

PROBE = (
    "import os, sys\n"
    "{before}"
    "from gateway import grpc_env\n"
    "print(grpc_env.apply(), repr(os.environ.get('GRPC_EXPERIMENTS')))\n"
)


def _probe(env: dict[str, str], before: str = "") -> str:
    base = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        env={**base, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_grpc_experiments_default_is_set_before_grpc_loads() -> None:
    assert _probe({}) == f"True {CLIENT_EXPERIMENTS!r}"


def test_grpc_experiments_given_by_the_operator_are_kept() -> None:
    assert _probe({"GRPC_EXPERIMENTS": ""}) == "True ''"  # empty: grpc's own defaults
    assert _probe({"GRPC_EXPERIMENTS": "-foo"}) == "True '-foo'"


def test_grpc_experiments_too_late_once_grpc_is_imported() -> None:
    assert _probe({}, before="import grpc\n") == "False None"


def test_entry_point_applies_it_before_importing_grpc() -> None:
    source = (REPO_ROOT / "gateway" / "__main__.py").read_text()
    assert source.index("grpc_env.apply()") < source.index("from gateway.cli import")


@pytest.mark.parametrize(("setting", "expected"), [("asyncio", "asyncio"), ("uvloop", "uvloop"), (None, "uvloop")])
def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: str) -> None:
    if setting is None:
        monkeypatch.delenv("GATEWAY_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("GATEWAY_EVENT_LOOP", setting)
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    run(main())
    assert seen == [expected]
