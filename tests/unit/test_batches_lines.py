"""A batch's input lines: each checked as OpenAI checks it, and the file scanned as a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.batches.lines import LineChecker
from gateway.batches.validate import scan

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def line(custom_id: Any = "a", **changes: Any) -> bytes:
    data = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": BODY} | changes
    return orjson.dumps({k: v for k, v in data.items() if v is not None})


def test_a_good_line() -> None:
    checked = LineChecker(CHAT, 1 << 20).check(line())
    assert checked.error is None and checked.custom_id == "a" and checked.body == BODY and checked.model == "m"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{oops", "invalid_json"),
        (b"[1, 2]", "invalid_request"),
        (line(custom_id=None), "missing_custom_id"),
        (line(custom_id=""), "missing_custom_id"),
        (line(custom_id=7), "missing_custom_id"),
        (line(custom_id="x" * 513), "invalid_custom_id"),
        (line(method="GET"), "invalid_method"),
        (line(url="/v1/embeddings"), "invalid_url"),
        (line(body=[1]), "invalid_body"),
        (line(extra=1), "invalid_request"),
        (line(body=BODY | {"temperature": "hot"}), "invalid_request_error"),
        (line(body=BODY | {"nope": 1}), "invalid_request_error"),
        (line(body=BODY | {"stream": True}), "unsupported_parameter"),
        (line(body=BODY | {"best_of": 3}), "invalid_request_error"),  # a completions parameter
    ],
)
def test_invalid_lines(raw: bytes, code: str) -> None:
    checked = LineChecker(CHAT, 1 << 20).check(raw)
    assert checked.error is not None and checked.error.code == code and checked.body is None


def test_validation_errors_carry_the_routes_400() -> None:
    checked = LineChecker(CHAT, 1 << 20).check(line(body=BODY | {"temperature": "hot"}))
    assert checked.error is not None and checked.error.error is not None
    assert checked.error.error.kind.http_status == 400 and checked.error.error.param == "temperature"
    assert LineChecker(CHAT, 1 << 20).check(line(url="/x")).error.error is None  # type: ignore[union-attr]


def test_duplicates_and_size() -> None:
    checker = LineChecker(CHAT, 200)
    assert checker.check(line("a")).error is None
    duplicate = checker.check(line("a"))
    assert duplicate.error is not None and duplicate.error.code == "duplicate_custom_id"
    big = checker.check(line("b", body=BODY | {"user": "u" * 300}))
    assert big.error is not None and big.error.code == "request_too_large"


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 16])
async def test_scan_locates_every_line_across_chunks(size: int) -> None:
    lines = [line("a"), b"", line("b") + b"\r", b"{bad", b"   ", line("c")]  # no newline after the last
    data = b"\n".join(lines)
    result = await scan(chunked(data, size), CHAT, 1 << 20)
    assert result.failure is None and result.model == "m"
    assert [s.custom_id for s in result.spans] == ["a", "b", None, "c"]
    assert [s.idx for s in result.spans] == [0, 1, 2, 3]
    for span in result.spans:
        raw = data[span.offset : span.offset + span.length]
        assert raw.rstrip(b"\r") in (line("a"), line("b"), b"{bad", line("c"))
    assert [c.error.code if c.error else None for c in result.checked] == [None, None, "invalid_json", None]
    assert result.valid == 3


async def test_scan_failures() -> None:
    empty = await scan(chunked(b"\n\n", 4), CHAT, 1 << 20)
    assert empty.failure is not None and empty.failure[0]["code"] == "empty_file"
    bad = await scan(chunked(b"{\nnope\n" + line("x", method="PUT") + b"\n", 5), CHAT, 1 << 20)
    assert bad.failure is not None
    assert [(e["code"], e["line"]) for e in bad.failure] == [
        ("invalid_json", 1),
        ("invalid_json", 2),
        ("invalid_method", 3),
    ]


async def test_scan_refuses_too_many_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.batches.validate.MAX_LINES", 3)
    data = b"\n".join(line(str(i)) for i in range(4))
    result = await scan(chunked(data, 100), CHAT, 1 << 20)
    assert result.failure is not None and result.failure[0]["code"] == "too_many_requests"
