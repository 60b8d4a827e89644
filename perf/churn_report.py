"""The churn benchmark's output: the progress line, the summary printed at the end, and the files
written (.json, .csv, .png)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from perf.churn_outcome import Record, outcome_class
from perf.churn_plot import plot
from perf.churn_sampler import Sample


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MB"


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def progress_line(
    elapsed: float, requests: int, rate: float, recent_rate: float, errors: int, hung: int, sample: Sample | None
) -> str:
    rss = _mb(sample.gateway_rss_kb) if sample else "-"
    fds = _n(sample.gateway_fds) if sample else "-"
    triton = _n(sample.triton_pid) if sample and sample.triton_pid else "gone"
    return (
        f"[churn] {elapsed:6.0f}s {requests:7d} req {rate:6.1f} req/s (last {recent_rate:6.1f}) "
        f"errors {errors} hung {hung} | gateway RSS {rss} fds {fds} | tritonserver {triton}"
    )


def _ms(d: dict[str, float], key: str) -> str:
    value = d[key]
    return "-" if math.isnan(value) else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def format_summary(result: dict[str, Any]) -> str:
    """The one-screen summary printed at the end."""
    s, res = result["summary"], result["resources"]
    width = max([16, *map(len, s["kinds"])])  # the kind column fits the longest name
    lines = [
        "",
        f"churn: {s['requests']} requests in {s['window_s']:.0f}s = {s['requests_per_s']:.1f} req/s "
        f"(ok {s['ok_per_s']:.1f}/s), concurrency {result['config']['concurrency']}",
        "classes: " + ", ".join(f"{c} {v}" for c, v in s["classes"].items()),
        "",
        f"{'kind':<{width}} {'req':>6} {'ok':>6} {'disc':>5} {'other':>5} {'e2e p50':>8} {'p99':>7} {'max':>7} "
        f"{'TTFT p50':>8} {'p99':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    for name, k in s["kinds"].items():
        ok = sum(c for o, c in k["outcomes"].items() if o.startswith("ok:"))
        disc = k["outcomes"].get("disconnect", 0)
        lines.append(
            f"{name:<{width}} {k['requests']:>6} {ok:>6} {disc:>5} {k['requests'] - ok - disc:>5} "
            f"{_ms(k['e2e_ms'], 'p50'):>8} {_ms(k['e2e_ms'], 'p99'):>7} {_ms(k['e2e_ms'], 'max'):>7} "
            f"{_ms(k['ttft_ms'], 'p50'):>8} {_ms(k['ttft_ms'], 'p99'):>7}"
        )
    lines.append("(ms; e2e and TTFT over ok requests; other = every outcome that is not ok or an intended disconnect)")
    lines.append("")
    lines.append("outcomes: " + ", ".join(f"{o} {c}" for o, c in s["outcomes"].items()))
    rss, fds, trss = res["gateway_rss_kb"], res["gateway_fds"], res["triton_rss_kb"]
    client = result.get("client_cpu_cores")
    lines.append(
        f"gateway RSS {_mb(rss['start'])} at start, {_mb(rss['warm'])} warm -> {_mb(rss['end'])} at end "
        f"(max {_mb(rss['max'])}); fds {_n(fds['start'])}, {_n(fds['warm'])} -> {_n(fds['end'])} "
        f"(max {_n(fds['max'])})"
    )
    lines.append(
        f"CPU: gateway {_n(None if res['gateway_cpu_cores'] is None else round(res['gateway_cpu_cores'], 2))} "
        f"cores, this client {_n(None if client is None else round(client, 2))} cores"
        f" (warm: the first sample {res['warm_t']:g}s in)"
    )
    triton = res["triton"]
    metric = result.get("metrics", {}).get("gateway_triton_restarts_total")
    lines.append(
        f"tritonserver (+ model processes) RSS {_mb(trss['warm'])} warm -> {_mb(trss['end'])}; "
        f"pids {triton['pids'] or '-'}; restarts {triton['restarts']} "
        f"(log {res['log_restarts']}, metric {_n(metric)}); gone in {triton['down_samples']} sample(s)"
    )
    metrics = result.get("metrics", {})
    lines.append(
        "after the load: in flight "
        f"{_n(metrics.get('gateway_requests_in_flight'))} (upstream "
        f"{_n(metrics.get('gateway_upstream_requests_in_flight'))}); client disconnects seen by the gateway "
        f"{_n(metrics.get('gateway_client_disconnects_total'))}, sent {s['classes']['disconnect']}"
    )
    lines.extend(deployment_lines(result.get("deployments")))
    checks = result.get("final_checks", {})
    lines.append("final checks: " + ", ".join(f"{n} {'ok' if c['ok'] else 'FAILED'}" for n, c in checks.items()))
    fails = result.get("failures", [])
    lines.append("")
    lines.append("PASS" if not fails else "FAIL:\n  - " + "\n  - ".join(fails))
    return "\n".join(lines)


def deployment_lines(d: dict[str, Any] | None) -> list[str]:
    """The deployment cycler's lines of the summary (none without --deployment-cycles)."""
    if d is None:
        return []
    counts = dict(d["counts"])
    cycles, ok = counts.pop("cycles"), counts.pop("cycle_ok")
    failed = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
    lines = [
        f"deployment cycles: {cycles} (ok {ok}); failures: {failed}; streams {d['streams']} (ok {d['streams_ok']}, "
        f"{d['live_at_delete']} still streaming when the DELETE answered); left over {_n(d['left_over'])}",
        f"  POST -> ready p50 {_ms(d['ready_ms'], 'p50')} ms (max {_ms(d['ready_ms'], 'max')}); "
        f"DELETE -> GET 404 p50 {_ms(d['gone_ms'], 'p50')} ms (max {_ms(d['gone_ms'], 'max')}); "
        f"a cycle p50 {_ms(d['cycle_ms'], 'p50')} ms",
    ]
    for c in d["failed_cycles"][:5]:
        lines.append(f"  cycle {c['n']} ({c['name']}, t={c['t']:g}s): " + "; ".join(c["details"]))
    return lines


def write_outputs(base: Path, result: dict[str, Any], records: list[Record]) -> list[Path]:
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{base}.json"), Path(f"{base}.csv"), Path(f"{base}.png")]
    paths[0].write_text(json.dumps(result, indent=2, default=str))
    with open(paths[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "start_s", "end_s", "ttft_ms", "outcome", "class"])
        for r in records:
            ttft = round(r.ttft * 1000, 2) if r.ttft else ""
            writer.writerow([r.kind, round(r.start, 4), round(r.end, 4), ttft, r.outcome, outcome_class(r.outcome)])
    plot(result, paths[2])
    return paths
