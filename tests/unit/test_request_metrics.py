"""The request-duration histogram resolves long generations (minutes to half an hour)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metrics import REQUEST_DURATION


def buckets(route: str) -> dict[float, float]:
    """Cumulative counts by upper bound of one labelled histogram, read from the exposition."""
    return {
        float(s.labels["le"]): s.value
        for family in text_string_to_metric_families(generate_latest().decode())
        for s in family.samples
        if s.name == "gateway_request_duration_seconds_bucket" and s.labels.get("route") == route
    }


def test_a_half_hour_generation_lands_in_a_finite_bucket() -> None:
    route = "test:long-generations"
    for seconds in (0.02, 90.0, 600.0, 1800.0):
        REQUEST_DURATION.labels(route, "m").observe(seconds)
    counts = buckets(route)
    finite = sorted(b for b in counts if b != float("inf"))
    assert finite[-1] >= 1800.0  # 30 minutes is below the largest finite bound
    assert counts[finite[-1]] == 4  # every observation, the half-hour one included
    # and the minutes between one and thirty are told apart, not lumped above 60 s
    assert len([b for b in finite if 60.0 < b <= 1920.0]) >= 4
    assert counts[0.025] == 1


def test_a_forgotten_model_leaves_no_series() -> None:
    """A deleted deployment's series go (models come and go through the operator API)."""
    from prometheus_client import generate_latest

    from gateway.observability.metrics import IN_FLIGHT, REQUESTS, UPSTREAM_IN_FLIGHT, child, forget_model

    child(IN_FLIGHT, "dep-forgotten").inc()
    child(REQUESTS, "/v1/chat/completions", "dep-forgotten", "200").inc()  # `model` not the first label
    UPSTREAM_IN_FLIGHT.labels("dep-forgotten", "127.0.0.1:1").inc()
    child(IN_FLIGHT, "dep-kept").inc()
    assert b'model="dep-forgotten"' in generate_latest()
    forget_model("dep-forgotten")
    text = generate_latest()
    assert b'model="dep-forgotten"' not in text
    assert b'model="dep-kept"' in text
    child(IN_FLIGHT, "dep-forgotten").inc()  # served again later: a fresh series
    assert b'gateway_requests_in_flight{model="dep-forgotten"} 1.0' in generate_latest()
    forget_model("dep-forgotten")
    forget_model("dep-kept")
