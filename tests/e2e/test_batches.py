"""Files and Batches with the official openai SDK against the real stack (Triton's synthetic model), and
the acceptance test: a batch of 200 lines across a gateway restart completes with exactly 200 outputs,
no line run twice."""

from __future__ import annotations

import io
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from openai.types import Batch

from tests.e2e.conftest import Stack, start_gateway, synthetic_upstream, wait_http

pytestmark = pytest.mark.e2e

SYNTHETIC = "synthetic"
DISPATCHED = re.compile(r"batch line dispatched: (\{.*\})")


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=60)


def chat_line(custom_id: str, max_tokens: int = 8, **body: Any) -> dict[str, Any]:
    request = {"model": SYNTHETIC, "messages": [{"role": "user", "content": custom_id}], "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request | body}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)


def submit(sdk: openai.OpenAI, lines: list[Any]) -> Batch:
    uploaded = sdk.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"test": "e2e"}
    )


def wait(sdk: openai.OpenAI, batch_id: str, done: Callable[[Batch], bool], within: float = 120.0) -> Batch:
    deadline = time.monotonic() + within
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {batch}")
        time.sleep(0.1)


def ended(batch: Batch) -> bool:
    return batch.status in ("completed", "failed", "expired", "cancelled")


def content(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [orjson.loads(line) for line in sdk.files.content(file_id).read().splitlines()]


def test_files(sdk: openai.OpenAI) -> None:
    data = jsonl([chat_line(f"f{i}") for i in range(3)])
    created = sdk.files.create(file=("mine.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.object == "file" and created.bytes == len(data) and created.filename == "mine.jsonl"
    assert created.purpose == "batch" and created.status == "processed"
    assert sdk.files.retrieve(created.id).id == created.id
    assert created.id in [f.id for f in sdk.files.list(purpose="batch")]
    assert sdk.files.content(created.id).read() == data
    second = sdk.files.create(file=("two.jsonl", io.BytesIO(data)), purpose="batch")
    page = sdk.files.list(limit=1, order="desc")
    assert [f.id for f in page.data] == [second.id] and page.has_more
    deleted = sdk.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)
    with pytest.raises(openai.BadRequestError):
        sdk.files.create(file=("x.jsonl", io.BytesIO(data)), purpose="assistants")


def test_chat_batch_completes(sdk: openai.OpenAI) -> None:
    batch = submit(sdk, [chat_line(f"c{i}", max_tokens=10 + i) for i in range(10)])
    assert batch.status == "validating" and batch.metadata == {"test": "e2e"}
    done = wait(sdk, batch.id, ended)
    assert done.status == "completed" and done.error_file_id is None and done.model == SYNTHETIC
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (10, 10, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = content(sdk, done.output_file_id)
    assert [line["custom_id"] for line in out] == [f"c{i}" for i in range(10)]
    for i, line in enumerate(out):
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == SYNTHETIC
        assert body["usage"]["completion_tokens"] == 10 + i
        assert body["choices"][0]["message"]["content"].startswith(" the quick brown fox")
    assert batch.id in [b.id for b in sdk.batches.list(limit=100)]


def test_invalid_lines_land_in_the_error_file(sdk: openai.OpenAI) -> None:
    lines: list[Any] = [
        chat_line("ok"),
        b"not json",
        chat_line("ok"),
        {**chat_line("url"), "url": "/v1/completions"},
        chat_line("bad", max_tokens="many"),
        chat_line("model", model="no-such-model"),
    ]
    done = wait(sdk, submit(sdk, lines).id, ended)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 1, 5)
    assert [line["custom_id"] for line in content(sdk, done.output_file_id)] == ["ok"]
    errors = content(sdk, done.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        (None, "invalid_json"),
        ("ok", "duplicate_custom_id"),
        ("url", "invalid_url"),
        ("bad", "invalid_request_error"),
        ("model", "model_not_found"),
    ]
    failed = wait(sdk, submit(sdk, [b"{", b"[]"]).id, ended)
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data
    assert [e.line for e in failed.errors.data] == [1, 2]


def test_cancel(sdk: openai.OpenAI) -> None:
    batch = submit(sdk, [chat_line(f"x{i}", max_tokens=100) for i in range(100)])  # ~0.5 s a line
    wait(sdk, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 1)
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait(sdk, batch.id, ended)
    assert done.status == "cancelled" and done.cancelled_at and done.request_counts is not None
    assert 1 <= done.request_counts.completed < 100
    assert len(content(sdk, done.output_file_id)) == done.request_counts.completed


@pytest.fixture
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data = tmp_path / "data"
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(data))
    yield data


def test_a_batch_survives_a_gateway_restart(tmp_path: Path, stack: Stack, own_data_dir: Path) -> None:
    """200 lines; the gateway stopped (SIGTERM) once some but not all are done, and a new one started
    on the same data dir: exactly 200 outputs, and each line sent upstream once (the gateways log each
    line as they send it; the output's request id is the one logged)."""
    n = 200
    first, port, first_log = start_gateway(tmp_path, *synthetic_upstream(stack))
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/ready", first, 60, first_log)
    sdk = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    batch = submit(sdk, [chat_line(f"line-{i:03d}", max_tokens=40) for i in range(n)])  # ~0.2 s a line
    some = wait(sdk, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 20)
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0, first_log.read_text()[-3000:]
    assert some.request_counts is not None and some.request_counts.completed < n
    second, port, second_log = start_gateway(tmp_path, *synthetic_upstream(stack))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ready", second, 60, second_log)
        sdk = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        done = wait(sdk, batch.id, ended, within=300)
        out = content(sdk, done.output_file_id)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    assert done.status == "completed" and done.error_file_id is None and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (n, n, 0)
    assert [line["custom_id"] for line in out] == [f"line-{i:03d}" for i in range(n)]
    before = [orjson.loads(m) for m in DISPATCHED.findall(first_log.read_text())]
    after = [orjson.loads(m) for m in DISPATCHED.findall(second_log.read_text())]
    assert before and after, "both gateways ran lines"
    sent = Counter(line["custom_id"] for line in before + after)
    assert set(sent) == {f"line-{i:03d}" for i in range(n)} and set(sent.values()) == {1}, sent.most_common(3)
    logged = {line["custom_id"]: line["request_id"] for line in before + after}
    assert {line["custom_id"]: line["response"]["request_id"] for line in out} == logged
    assert "Traceback" not in first_log.read_text() + second_log.read_text()
