"""Keys end to end: `gateway keys create` writes the config, the openai SDK uses the printed key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.conftest import REPO, WEIGHTS
from tests.e2e.conftest import MODEL, Stack, start_gateway, stop, wait_http

pytestmark = pytest.mark.e2e


def create_key(config: Path, project: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "create", "--project", project, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    key = out.stdout.strip()
    assert key.startswith("sk-") and key not in config.read_text()  # only the digest is stored
    return key


def test_keys_through_the_sdk(tmp_path: Path, stack: Stack) -> None:
    config = tmp_path / "gateway.toml"
    key = create_key(config, "team-a")
    proc, port, log = start_gateway(
        tmp_path,
        "--config", str(config),
        "--triton-url", f"127.0.0.1:{stack.triton_grpc_port}",
        "--tokenizer-dir", str(WEIGHTS),
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ready", proc, 60, log)
        good = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        resp = good.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0
        )
        assert resp.usage is not None and resp.usage.completion_tokens <= 3
        scoped = openai.OpenAI(base_url=base + "/team-a/v1", api_key=key, max_retries=0)
        assert [m.id for m in scoped.models.list()] == [MODEL]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0).models.list()
        with pytest.raises(openai.PermissionDeniedError):
            openai.OpenAI(base_url=base + "/team-b/v1", api_key=key, max_retries=0).models.list()
    finally:
        assert stop(proc) == 0
    assert key not in log.read_text()  # never logged


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[[projects]]\nid = 'p'\n[projects.limits]\ntokens_per_minute = -5\n")
    proc, _, log = start_gateway(tmp_path, "--config", str(config), "--triton-url", "127.0.0.1:1")
    assert proc.wait(60) == 2
    assert "projects.0.limits.tokens_per_minute" in log.read_text()
