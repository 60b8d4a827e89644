"""The churn benchmark's figures and gate: aggregation of the records and samples of a run, and the
reasons it fails. No network, no /proc."""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from perf.churn_outcome import Record, outcome_class, unexpected
from perf.churn_sampler import Sample
from perf.metrics import distribution


def kind_summary(records: Sequence[Record]) -> dict[str, Any]:
    ok = [r for r in records if r.outcome.startswith("ok:")]
    return {
        "requests": len(records),
        "outcomes": dict(Counter(r.outcome for r in records).most_common()),
        "e2e_ms": distribution([r.end - r.start for r in ok]),
        "ttft_ms": distribution([r.ttft for r in ok if r.ttft > 0]),
        "disconnect_after_ms": distribution([r.end - r.start for r in records if r.outcome == "disconnect"]),
    }


def summarize(records: Sequence[Record], window: float, allowed: Sequence[str] = ()) -> dict[str, Any]:
    """Every request figure of a run; ``window`` is the load phase's wall time (s)."""
    outcomes = Counter(r.outcome for r in records)
    classes = Counter(outcome_class(r.outcome) for r in records)
    by_kind: dict[str, list[Record]] = {}
    for r in records:
        by_kind.setdefault(r.kind, []).append(r)
    bad = {o: c for o, c in outcomes.items() if unexpected(o, allowed)}
    return {
        "requests": len(records),
        "window_s": window,
        "requests_per_s": len(records) / window if window > 0 else math.nan,
        "ok_per_s": classes["ok"] / window if window > 0 else math.nan,
        "classes": {c: classes.get(c, 0) for c in ("ok", "disconnect", "error", "hung")},
        "outcomes": dict(outcomes.most_common()),
        "unexpected": sum(bad.values()),
        "unexpected_outcomes": dict(sorted(bad.items(), key=lambda kv: -kv[1])),
        "kinds": {name: kind_summary(rs) for name, rs in sorted(by_kind.items())},
    }


def timeline(records: Iterable[Record], bucket: float, window: float) -> list[dict[str, Any]]:
    """Requests that ended in each ``bucket``-second slice of the run, by class (per second)."""
    n = max(1, math.ceil(window / bucket))
    counts = [Counter[str]() for _ in range(n)]
    for r in records:
        i = min(n - 1, max(0, int(r.end // bucket)))
        counts[i][outcome_class(r.outcome)] += 1
    out = []
    for i in range(n):
        width = max(bucket if i < n - 1 else window - i * bucket, 1e-9)  # the last slice may be shorter
        out.append(
            {"t": i * bucket + width, **{c: counts[i].get(c, 0) / width for c in ("ok", "disconnect", "error", "hung")}}
        )
    return out


def triton_changes(pids: Sequence[int | None]) -> dict[str, Any]:
    """From the tritonserver pid of each sample: restarts (a new pid after another one) and whether
    Triton was seen gone after it had been up."""
    seen: list[int] = []
    down_samples = 0
    for pid in pids:
        if pid is None:
            if seen:
                down_samples += 1
        elif not seen or seen[-1] != pid:
            seen.append(pid)
    return {
        "pids": seen,
        "restarts": max(0, len(seen) - 1),
        "down_samples": down_samples,
        "down_at_end": bool(seen) and bool(pids) and pids[-1] is None,
    }


def resources(samples: Sequence[Sample], warm_t: float = 0.0) -> dict[str, Any]:
    """RSS and fds at the start, after warm-up (the first sample at or after ``warm_t`` s), at the end,
    and their extremes; growth = end - warm (what a leak shows as); Triton's pids and restarts."""

    def series(name: str, since: float = 0.0) -> list[float]:
        return [v for s in samples if (v := getattr(s, name)) is not None and s.t >= since]

    out: dict[str, Any] = {"samples": len(samples)}
    for name in ("gateway_rss_kb", "gateway_fds", "triton_rss_kb"):
        values, warmed = series(name), series(name, warm_t)
        warm = warmed[0] if warmed else None
        end = values[-1] if values else None
        out[name] = {
            "start": values[0] if values else None,
            "warm": warm,
            "end": end,
            "growth": end - warm if end is not None and warm is not None else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
        }
    cpu = [(s.t, s.gateway_cpu_s) for s in samples if s.gateway_cpu_s is not None]
    span = cpu[-1][0] - cpu[0][0] if len(cpu) > 1 else 0.0
    out["gateway_cpu_cores"] = (cpu[-1][1] - cpu[0][1]) / span if span > 0 else None
    out["warm_t"] = warm_t
    out["triton"] = triton_changes([s.triton_pid for s in samples])
    out["log_restarts"] = samples[-1].log_restarts if samples else 0
    return out


def failures(result: dict[str, Any]) -> list[str]:
    """Why the run fails the gate (empty: it passes)."""
    out = []
    summary, res = result["summary"], result["resources"]
    if summary["requests"] == 0:
        out.append("no request completed")
    if summary["unexpected"]:
        shown = ", ".join(f"{o} x{c}" for o, c in list(summary["unexpected_outcomes"].items())[:6])
        out.append(f"{summary['unexpected']} unexpected outcome(s): {shown}")
    triton = res["triton"]
    if triton["restarts"]:
        out.append(f"tritonserver restarted {triton['restarts']} time(s) (pids {triton['pids']})")
    if triton["down_samples"]:
        still = ", and still gone at the end" if triton["down_at_end"] else ""
        out.append(f"tritonserver was gone in {triton['down_samples']} sample(s){still}")
    if res["log_restarts"]:
        out.append(f"the gateway logged 'tritonserver exited unexpectedly' {res['log_restarts']} time(s)")
    metric = result.get("metrics", {}).get("gateway_triton_restarts_total")
    if metric:
        out.append(f"gateway_triton_restarts_total = {metric:g}")
    if result.get("gateway_exited"):
        out.append("the gateway process exited during the run")
    for name, check in result.get("final_checks", {}).items():
        if not check.get("ok"):
            out.append(f"final check {name} failed: {check.get('detail', '')}")
    for name in ("gateway_requests_in_flight", "gateway_upstream_requests_in_flight"):
        value = result.get("metrics", {}).get(name)
        if value:
            out.append(f"{name} = {value:g} after the load stopped (leaked slots)")
    deployments = result.get("deployments")  # its failed checks are unexpected outcomes already
    if deployments is not None:
        if not deployments["counts"]["cycles"]:
            out.append("the deployment cycler completed no cycle")
        if deployments["left_over"]:
            out.append(f"{deployments['left_over']} deployment(s) of the cycler still listed at the end")
    return out


def build_result(args: argparse.Namespace, run: dict[str, Any], samples: list[Sample]) -> dict[str, Any]:
    records: list[Record] = run["records"]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "api_key"}
    result: dict[str, Any] = {
        "config": config,
        "summary": summarize(records, run["window"], args.allow),
        "resources": resources(samples, warm_t=min(30.0, 0.1 * args.duration)),
        "metrics": run["metrics"],
        "final_checks": run["final_checks"],
        "gateway_exited": run["gateway_exited"],
        "client_cpu_cores": run["client_cpu_cores"],
        "deployments": run.get("deployments"),
        "timeline": timeline(records, args.sample_interval, run["window"]),
        "samples": [asdict(s) for s in samples],
    }
    result["failures"] = failures(result)
    result["passed"] = not result["failures"]
    return result
