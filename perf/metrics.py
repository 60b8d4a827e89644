"""Benchmark metrics, as genai-perf / AIPerf and vLLM's benchmark define them.

Per request:
- TTFT: request sent -> first chunk with non-empty content (a role-only chunk does not count).
- ITL: the gaps between consecutive content chunks.
- TPOT: (end-to-end - TTFT) / (output tokens - 1).
- E2E latency: request sent -> last byte.
- Output tokens/s per request: (output tokens - 1) / (E2E - TTFT).

Per run: p50/p90/p99/max of each, output tokens/s and requests/s in aggregate over the measured
window, goodput (requests/s meeting every SLO), error and cancellation counts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    target: str
    start: float  # time.monotonic(), comparable across processes
    end: float = 0.0
    first_token: float = 0.0  # 0: none arrived
    chunk_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    input_tokens: int = 0
    error: str | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled and self.first_token > 0

    @property
    def ttft(self) -> float:
        return self.first_token - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def itls(self) -> list[float]:
        times = self.chunk_times
        return [b - a for a, b in itertools.pairwise(times)]

    @property
    def tpot(self) -> float:
        return (self.end - self.first_token) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0

    @property
    def tokens_per_s(self) -> float:
        decode = self.end - self.first_token
        return (self.output_tokens - 1) / decode if self.output_tokens > 1 and decode > 0 else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "start": self.start,
            "ttft_ms": self.ttft * 1000 if self.first_token else None,
            "e2e_ms": self.e2e * 1000,
            "tpot_ms": self.tpot * 1000,
            "tokens_per_s": self.tokens_per_s,
            "output_tokens": self.output_tokens,
            "input_tokens": self.input_tokens,
            "chunks": len(self.chunk_times),
            "error": self.error or "",
            "cancelled": self.cancelled,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution(values: Sequence[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p90/p99/max/mean of ``values`` (seconds), scaled (to ms by default)."""
    if not values:
        return {k: math.nan for k in ("p50", "p90", "p99", "max", "mean")}
    return {
        "p50": percentile(values, 50) * scale,
        "p90": percentile(values, 90) * scale,
        "p99": percentile(values, 99) * scale,
        "max": max(values) * scale,
        "mean": sum(values) / len(values) * scale,
    }


@dataclass(frozen=True, slots=True)
class SLO:
    ttft_ms: float = 200.0
    tpot_ms: float = 10.0

    def met(self, record: RequestRecord) -> bool:
        return record.ok and record.ttft * 1000 <= self.ttft_ms and record.tpot * 1000 <= self.tpot_ms


def summarize(records: Sequence[RequestRecord], window: float, slo: SLO = SLO()) -> dict[str, Any]:
    """Every figure of one target at one load level; ``window`` is the measured wall time (s)."""
    ok = [r for r in records if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    return {
        "requests": len(records),
        "completed": len(ok),
        "errors": sum(1 for r in records if r.error is not None),
        "cancelled": sum(1 for r in records if r.cancelled),
        "window_s": window,
        "ttft_ms": distribution([r.ttft for r in ok]),
        "itl_ms": distribution([gap for r in ok for gap in r.itls]),
        "tpot_ms": distribution([r.tpot for r in ok if r.output_tokens > 1]),
        "e2e_ms": distribution([r.e2e for r in ok]),
        "tokens_per_s_per_request": distribution([r.tokens_per_s for r in ok], scale=1.0),
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / window if window > 0 else math.nan,
        "requests_per_s": len(ok) / window if window > 0 else math.nan,
        "goodput_requests_per_s": sum(1 for r in ok if slo.met(r)) / window if window > 0 else math.nan,
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
    }
