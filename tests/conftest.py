"""Shared fixtures: the CPU model's tokenizer files and its Triton config (prepared by `make model`)."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.engine.contract import ModelContract
from gateway.text.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO / "model_repository"
WEIGHTS = MODEL_REPOSITORY / "smollm2" / "weights"

# the durable state (usage ledger, files, batches) of every app and gateway the tests start: never the
# checkout's .data/ (set on import, before any test module builds a config; gateways started inherit it)
DATA_DIR = Path(tempfile.mkdtemp(prefix="gateway-tests-data-"))
os.environ["GATEWAY_DATA_DIR"] = str(DATA_DIR)
atexit.register(shutil.rmtree, DATA_DIR, ignore_errors=True)  # however the session ends


async def until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Poll until ``predicate`` holds (failing the test after ``within`` seconds); the seconds it took."""
    begun = time.monotonic()
    while not predicate():
        if time.monotonic() - begun > within:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - begun


def read_model_config(name: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((MODEL_REPOSITORY / name / "config.pbtxt").read_text(), config)
    return config


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    if not (WEIGHTS / "tokenizer.json").is_file():
        pytest.fail("model not prepared: run `make model` (make test does it)")
    return Tokenizer(WEIGHTS)


@pytest.fixture(scope="session")
def contract() -> ModelContract:
    return ModelContract.from_config(read_model_config("smollm2"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port (make test installs it when missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found: `make test` installs it (Debian package redis-server)")
    from perf.stack import free_port

    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto's, a process of its own) on a free loopback port."""
    from perf.stack import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60  # a bound against a hang: it starts in a few seconds
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the S3 test server (moto) did not start: `make test` installs moto[server]")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_bucket(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new empty bucket on that server, and credentials for it in the environment (boto3's chain)."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"test-{os.urandom(6).hex()}"
    client = boto3.session.Session().client("s3", endpoint_url=s3_url, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    client.close()
    return name
