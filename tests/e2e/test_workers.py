"""--workers 2: two processes on one port; limits and /metrics hold across them; SIGTERM exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.keys import new_key
from tests.e2e.conftest import Stack, reaped, start_gateway, synthetic_upstream, wait_http

pytestmark = pytest.mark.e2e


async def test_two_workers_share_limits_and_metrics(tmp_path: Path, stack: Stack) -> None:
    key, record = new_key("team", "w")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[projects]]\nid = "team"\n\n[[keys]]\nid = "{record.id}"\nsha256 = "{record.sha256}"\n'
        'project = "team"\n[keys.limits]\nrequests_per_minute = 5\n'
    )
    proc, port, log = start_gateway(tmp_path, "--workers", "2", "--config", str(config), *synthetic_upstream(stack))
    with reaped(proc):
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/ready", proc, 90, log)
        body = {"model": "synthetic", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
        statuses, headers = [], []
        for _ in range(9):  # a new connection each time: the kernel spreads them over the workers
            async with (
                aiohttp.ClientSession() as session,
                session.post(base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as r,
            ):
                statuses.append(r.status)
                headers.append(r.headers)
        assert statuses.count(200) == 5 and statuses.count(429) == 4  # one budget, whichever worker answers
        assert [h["x-ratelimit-remaining-requests"] for h in headers[:5]] == ["4", "3", "2", "1", "0"]
        assert all(h["x-ratelimit-limit-requests"] == "5" for h in headers)
        assert all(int(h["Retry-After"]) >= 1 for h in headers[5:])
        async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as resp:
            text = await resp.text()
        samples = {
            (s.name, s.labels.get("status"), s.labels.get("route")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "gateway_requests_total"
        }
        route = "/v1/chat/completions"
        assert samples[("gateway_requests_total", "200", route)] == 5  # summed over both workers
        assert samples[("gateway_requests_total", "429", route)] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        text = log.read_text()
        assert text.count(": drained") == 2  # both workers drained
        assert "Traceback" not in text
