"""Request ids, the overhead header, the access log and /metrics after known traffic."""

from __future__ import annotations

import logging

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.text.tokenizer import Tokenizer
from tests.integration.conftest import MODEL, REPLY

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


async def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_known_traffic(client: TestClient, tokenizer: Tokenizer) -> None:
    before = await scrape(client)
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert resp.status == 200
        await resp.read()  # a stream is accounted when it ends
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})).status == 404
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/chat/completions"
    assert delta("gateway_requests_total", route=route, model=MODEL, status="200") == 2
    assert delta("gateway_requests_total", route=route, model="", status="404") == 1
    reply_tokens = len(tokenizer.encode(REPLY))
    assert delta("gateway_tokens_total", model=MODEL, project="default", type="output_tokens") == 2 * reply_tokens
    prompt = len(tokenizer.encode(tokenizer.apply_chat_template(CHAT["messages"])))  # type: ignore[arg-type]
    assert delta("gateway_tokens_total", model=MODEL, project="default", type="input_tokens") == 2 * prompt
    assert delta("gateway_time_to_first_token_seconds_count", model=MODEL) == 2
    # one gap per delta after the first, per request (the fake engine sends one token per response)
    assert delta("gateway_inter_token_latency_seconds_count", model=MODEL) > 0
    assert delta("gateway_overhead_seconds_count", model=MODEL) == 2
    assert value(after, "gateway_requests_in_flight", model=MODEL) == 0


async def test_request_id_and_overhead_headers(client: TestClient) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "my-trace-42"})
    assert resp.headers["x-request-id"] == "my-trace-42"
    assert float(resp.headers["x-gateway-overhead-ms"]) >= 0
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.headers["x-request-id"].startswith("req_") and "x-gateway-overhead-ms" in resp.headers
    await resp.read()
    resp = await client.get("/v1/models", headers={"x-request-id": "bad id with spaces"})
    assert resp.headers["x-request-id"].startswith("req_")  # unsafe ids are replaced


async def test_access_log_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "trace-7"})
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert any('"request_id":"trace-7"' in line and '"status":200' in line and '"ttft_ms"' in line for line in lines)
