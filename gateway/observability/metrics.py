"""Prometheus metrics, defined once, shared by REST and gRPC.

Per-token observations go through a :class:`ChoiceObserver` whose labelled children are resolved
once per request, so each token costs one histogram observe and no label lookup.
With several worker processes, prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR)
aggregates them; /metrics reads whichever registry applies.
"""

from __future__ import annotations

import os
import time
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# whole requests: long generations run for many minutes (vLLM's e2e buckets reach 7680 s)
_REQUEST = (*_LATENCY, 120.0, 240.0, 480.0, 960.0, 1920.0, 3840.0)
_ITL = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)

REQUESTS = Counter(
    "gateway_requests_total", "Requests answered, by API route, model and status", ["route", "model", "status"]
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds", "End-to-end request latency", ["route", "model"], buckets=_REQUEST
)
TTFT = Histogram("gateway_time_to_first_token_seconds", "Request arrival to first text", ["model"], buckets=_LATENCY)
ITL = Histogram("gateway_inter_token_latency_seconds", "Gap between text deltas of a choice", ["model"], buckets=_ITL)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Gateway time before the upstream request is sent (parse, auth, template, tokenize)",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
QUEUE_WAIT = Histogram(
    "gateway_queue_wait_seconds", "Time waiting for an upstream slot (admission)", ["model"], buckets=_LATENCY
)
IN_FLIGHT = Gauge("gateway_requests_in_flight", "Generations running", ["model"], multiprocess_mode="livesum")
TOKENS = Counter("gateway_tokens_total", "Tokens by model, project and type", ["model", "project", "type"])
AUDIO_SECONDS = Counter(
    "gateway_audio_seconds_total", "Seconds of audio transcribed, by model and project", ["model", "project"]
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total", "Failed upstream calls by gRPC status", ["model", "grpc_status"]
)
RATE_LIMITED = Counter(
    "gateway_rate_limit_rejections_total", "Requests refused by a limit", ["model", "project", "limit"]
)
UPSTREAM_HEALTHY = Gauge(
    "gateway_upstream_healthy",
    "1 while a Triton server passes its health checks and is not ejected",
    ["model", "upstream"],
    multiprocess_mode="livemin",
)
UPSTREAM_IN_FLIGHT = Gauge(
    "gateway_upstream_requests_in_flight",
    "Requests running on a Triton server",
    ["model", "upstream"],
    multiprocess_mode="livesum",
)
UPSTREAM_REQUESTS = Counter(
    "gateway_upstream_requests_total", "Requests sent to a Triton server (retries included)", ["model", "upstream"]
)
UPSTREAM_FAILURES = Counter(
    "gateway_upstream_failures_total", "Requests a Triton server failed (unavailable, timed out)", ["model", "upstream"]
)
UPSTREAM_EJECTIONS = Counter(
    "gateway_upstream_ejections_total", "Times a Triton server was taken out after failures", ["model", "upstream"]
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries_total", "Requests retried on another Triton server before their first token", ["model"]
)
DISCONNECTS = Counter("gateway_client_disconnects_total", "Clients gone before their response ended", ["model"])


M = TypeVar("M", Counter, Gauge, Histogram)
_CHILDREN: dict[tuple[Counter | Gauge | Histogram, tuple[str, ...]], Counter | Gauge | Histogram] = {}


def child(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, resolved once and then kept: a request's handful of label lookups
    cost a dict hit each instead of prometheus-client's validation, lock and tuple building. (Label
    values are bounded as the metric's own children are: routes, models, projects, statuses.)"""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found  # type: ignore[return-value]


def forget_model(model_id: str) -> None:
    """Drop every series labelled with ``model_id`` (a deleted deployment's): models come and go through
    the operator API, and their label sets must not pile up in memory and in /metrics."""
    where: dict[object, int] = {}  # metric -> the position of its `model` label
    for metric in [m for m in globals().values() if isinstance(m, Counter | Gauge | Histogram)]:
        if "model" not in metric._labelnames:
            continue
        at = where[metric] = metric._labelnames.index("model")
        for labels in [k for k in list(metric._metrics) if k[at] == model_id]:
            metric.remove(*labels)
    for key in [k for k in _CHILDREN if k[0] in where and k[1][where[k[0]]] == model_id]:
        del _CHILDREN[key]


class ChoiceObserver:
    """TTFT and inter-token gaps of one choice."""

    __slots__ = ("_itl", "_last", "_started", "_ttft")

    def __init__(self, model: str, started: float) -> None:
        self._ttft = child(TTFT, model)
        self._itl = child(ITL, model)
        self._started = started
        self._last = 0.0

    def delta(self) -> None:
        now = time.monotonic()
        if self._last:
            self._itl.observe(now - self._last)
        else:
            self._ttft.observe(now - self._started)
        self._last = now


def render() -> tuple[bytes, str]:
    """The exposition text, aggregated over worker processes when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


TRITON_RESTARTS = Counter(
    "gateway_triton_restarts_total", "Times the tritonserver the gateway launched died and was restarted (ready again)"
)
