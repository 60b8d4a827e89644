"""The load generator's own logic: SSE parsing across arbitrary chunk boundaries, and metrics."""

from __future__ import annotations

import math

import pytest

from perf.metrics import SLO, RequestRecord, distribution, percentile, summarize
from perf.report import gateway_vs_direct
from perf.sse import SSEParser

STREAM = (
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}\r\n\r\n'
    b"event: ignored\ndata: line one\ndata: line two\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    b'{"choices":[{"delta":{"role":"assistant","content":""}}]}',
    b'{"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}',
    b"line one\nline two",
    b"[DONE]",
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_sse_parser_any_chunking(size: int) -> None:
    parser = SSEParser()
    events = []
    for i in range(0, len(STREAM), size):
        events.extend(parser.feed(STREAM[i : i + size]))
    assert events == EXPECTED


def test_incomplete_event_waits() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: {") == []
    assert parser.feed(b"}\n") == []
    assert parser.feed(b"\n") == [b"{}"]


def test_percentile_matches_linear_interpolation() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile(values, 100) == 5.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert distribution([0.001, 0.003])["p50"] == pytest.approx(2.0)


def record(start: float, first: float, chunks: list[float], tokens: int, target: str = "t") -> RequestRecord:
    return RequestRecord(target, start, end=chunks[-1], first_token=first, chunk_times=chunks, output_tokens=tokens)


def test_request_metrics() -> None:
    r = record(10.0, 10.1, [10.1, 10.11, 10.13, 10.16], tokens=4)
    assert r.ttft == pytest.approx(0.1)
    assert r.itls == pytest.approx([0.01, 0.02, 0.03])
    assert r.tpot == pytest.approx(0.06 / 3)
    assert r.tokens_per_s == pytest.approx(3 / 0.06)
    assert r.e2e == pytest.approx(0.16)


def test_summary_goodput_errors_and_throughput() -> None:
    fast = record(0.0, 0.05, [0.05, 0.055, 0.06], tokens=3)  # TTFT 50 ms, TPOT 5 ms
    slow = record(0.0, 0.5, [0.5, 0.6], tokens=2)  # TTFT 500 ms: misses the SLO
    failed = RequestRecord("t", 0.0, end=0.1, error="http_503")
    s = summarize([fast, slow, failed], window=2.0, slo=SLO(ttft_ms=200, tpot_ms=10))
    assert (s["requests"], s["completed"], s["errors"]) == (3, 2, 1)
    assert s["output_tokens"] == 5 and s["output_tokens_per_s"] == 2.5
    assert s["requests_per_s"] == 1.0 and s["goodput_requests_per_s"] == 0.5
    assert s["ttft_ms"]["max"] == pytest.approx(500)


def test_gateway_vs_direct_ratios() -> None:
    def result(target: str, ttft: float, itl: float, tps: float) -> dict[str, object]:
        dist = {"p50": ttft, "p99": ttft * 2}
        return {"level": 8, "target": target, "ttft_ms": dist, "itl_ms": {"p99": itl}, "output_tokens_per_s": tps}

    rows = gateway_vs_direct([result("direct", 10, 1, 1000), result("gateway-chat", 12, 1.5, 950)])
    assert rows == [
        {
            "level": 8,
            "target": "gateway-chat",
            "added_ttft_p50_ms": 2,
            "added_ttft_p99_ms": 4,
            "added_itl_p99_ms": 0.5,
            "throughput_ratio": 0.95,
        }
    ]
