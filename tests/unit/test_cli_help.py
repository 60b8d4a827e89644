"""The command line's help (commands and the environment each reads), a bare `gateway` printing it
instead of serving, flags without a command still serving, and the console options."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import REPO_ROOT

GATEWAY = REPO_ROOT / "gateway"


def served(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """What main() would serve, instead of serving it."""
    calls: list[argparse.Namespace] = []

    def serve(args: argparse.Namespace) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(cli, "_serve", serve)
    return calls


def variables_read() -> set[str]:
    """Every environment variable the gateway's code reads by name (but those it sets for itself)."""
    reads = re.compile(r"""(?:os\.environ\.get|env|_env_int|setdefault)\(\s*"([A-Z][A-Z0-9_]+)\"""")
    found: set[str] = set()
    for path in GATEWAY.rglob("*.py"):
        if "_generated" not in path.parts:
            found |= set(reads.findall(path.read_text()))
    return found - {"PROMETHEUS_MULTIPROC_DIR"}  # set by --workers for its processes


def test_a_bare_gateway_prints_the_help_and_serves_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = served(monkeypatch)
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert not calls
    assert out.startswith("usage: gateway")
    for command in ("serve", "prepare-model", "keys"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), command


def test_the_help_lists_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    names = variables_read()
    assert {"GATEWAY_PORT", "GATEWAY_CORS_ORIGINS", "GATEWAY_ACCESS_LOG_PROBES", "TRITON_GRPC_PORT"} <= names
    assert {n for n in names if n not in out} == set()
    listed = {name for _, variables in cli.ENVIRONMENT.items() for name, _ in variables}
    assert listed == names  # nothing listed that nothing reads
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    serve_help = capsys.readouterr().out
    assert "--cors-origins" in serve_help and "--no-access-log-probes" in serve_help and "GATEWAY_PORT" in serve_help


def test_python_m_gateway_prints_the_help_and_exits() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: gateway") and "GATEWAY_PORT" in done.stdout
    assert "[gateway]" not in done.stderr  # nothing started


@pytest.mark.parametrize(
    ("argv", "port", "level"),
    [
        (["--port", "9000"], 9000, "INFO"),  # flags without a command: serve, as before there were commands
        (["-q", "--port", "9001"], 9001, "WARNING"),
        (["--log-level", "debug", "serve", "--port", "9002"], 9002, "DEBUG"),
        (["serve", "--quiet", "--log-level", "DEBUG"], None, "WARNING"),  # --quiet wins
        (["serve", "--log-level=error"], None, "ERROR"),
    ],
)
def test_flags_without_a_command_serve(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], port: int | None, level: str
) -> None:
    monkeypatch.delenv("GATEWAY_PORT", raising=False)
    monkeypatch.delenv("GATEWAY_LOG_LEVEL", raising=False)
    calls = served(monkeypatch)
    assert cli.main(argv) == 0
    (args,) = calls
    assert (args.command, args.port, args.log_level) == ("serve", port, level)


def test_the_log_level_from_the_environment_is_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served(monkeypatch)
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "chatty")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve"])
    assert exit_.value.code == 2 and "GATEWAY_LOG_LEVEL=CHATTY" in capsys.readouterr().err
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "warning")
    calls = served(monkeypatch)
    assert cli.main(["serve"]) == 0 and calls[0].log_level == "WARNING"


def test_an_unknown_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["srve"])
    assert exit_.value.code == 2 and "invalid choice: 'srve'" in capsys.readouterr().err


def test_quiet_keeps_errors_only(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("gateway")
    before = logger.level
    try:
        logger.setLevel(logging.WARNING)
        cli._progress("Triton ready")
        cli._say("error: boom")
        logger.setLevel(logging.INFO)
        cli._progress("gateway on http://…")
    finally:
        logger.setLevel(before)
    assert capsys.readouterr().err == "[gateway] error: boom\n[gateway] gateway on http://…\n"


def test_cors_and_probe_logging_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = ["serve", "--triton-url", "127.0.0.1:8001", "--tokenizer-dir", str(tmp_path)]
    for name in ("GATEWAY_CORS_ORIGINS", "GATEWAY_ACCESS_LOG_PROBES", "GATEWAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config, triton = cli._load(cli._parser().parse_args(base))
    assert triton is None and config.cors_origins == [] and config.access_log_probes
    flags = ["--cors-origins", "https://a.example.com, http://localhost:3000", "--no-access-log-probes"]
    config, _ = cli._load(cli._parser().parse_args([*base, *flags]))
    assert config.cors_origins == ["https://a.example.com", "http://localhost:3000"] and not config.access_log_probes
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "*")
    monkeypatch.setenv("GATEWAY_ACCESS_LOG_PROBES", "false")
    config, _ = cli._load(cli._parser().parse_args(base))
    assert config.cors_origins == ["*"] and not config.access_log_probes
    config, _ = cli._load(cli._parser().parse_args([*base, "--access-log-probes"]))  # the flag wins
    assert config.access_log_probes
