"""The pure parts of the churn benchmark (``perf/churn.py``): the request mix, outcome
classification, aggregation, the gate, the printed summary and the plot. No network, no /proc.

Outcomes, one string per request:
- ``ok:<finish_reason>`` (``ok:length``, ``ok:stop``; n > 1: the distinct reasons joined with ``+``);
- ``disconnect``: the client closed the connection on purpose after 1-3 SSE events;
- ``http_<status>:<code>``: a non-200 answer, with the error body's ``code`` (or ``type``);
- ``sse_error:<code>``: an in-band ``data: {"error": ...}`` event;
- ``conn:<exception>``: the connection failed or broke (refused, reset, truncated chunk);
- ``hung``: no complete answer within the client timeout;
- ``truncated``: the stream ended cleanly but without ``[DONE]``;
- ``incomplete``: ``[DONE]`` came before every choice had its finish_reason;
- ``bad_finish:<reason>``: a finish_reason the request kind cannot have (synthetic streams are
  exactly ``max_tokens`` long, so ``length``; the stop-string kind must end with ``stop``);
- ``bad_body``: a 200 whose JSON body is unreadable or lacks its choices.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from perf.metrics import distribution

SYNTHETIC = "synthetic"
REAL = "real"


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of request in the mix."""

    name: str
    model: str  # SYNTHETIC or REAL: resolved to a model id from the command line
    stream: bool
    max_tokens: int
    n: int = 1
    stop: tuple[str, ...] = ()
    disconnect: bool = False  # the client closes the connection after 1-3 SSE events
    expect: tuple[str, ...] = ()  # finish reasons this kind may end with; empty: any
    real_tokens: bool = False  # max_tokens comes from --real-max-tokens


# The synthetic model's text cycles through " the quick brown fox jumps over the lazy dog ." and every
# stream is exactly max_tokens long, so its finish reasons are known in advance.
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("one_token", SYNTHETIC, True, 1, expect=("length",)),
        Kind("long_stream", SYNTHETIC, True, 256, expect=("length",)),
        Kind("stop", SYNTHETIC, True, 64, stop=("lazy",), expect=("stop",)),
        Kind("n2", SYNTHETIC, True, 16, n=2, expect=("length",)),
        Kind("n2_nonstream", SYNTHETIC, False, 16, n=2, expect=("length",)),
        Kind("nonstream", SYNTHETIC, False, 32, expect=("length",)),
        Kind("disconnect", SYNTHETIC, True, 256, disconnect=True),
        Kind("real_stream", REAL, True, 8, expect=("length", "stop"), real_tokens=True),
        Kind("real_nonstream", REAL, False, 8, expect=("length", "stop"), real_tokens=True),
        Kind("real_disconnect", REAL, True, 32, disconnect=True),
    )
}

DEFAULT_MIX = (
    "one_token=20,long_stream=12,stop=15,n2=8,n2_nonstream=4,nonstream=15,disconnect=15,"
    "real_stream=3,real_nonstream=1,real_disconnect=1"
)

PROMPTS = {
    SYNTHETIC: "Say something.",
    REAL: "What is the capital of France?",
}


def parse_mix(spec: str) -> dict[str, float]:
    """``name=weight,...`` -> {name: weight}; kinds left out get no traffic."""
    weights: dict[str, float] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in KINDS:
            raise ValueError(f"--mix: {item!r} is not KIND=WEIGHT with KIND one of {', '.join(KINDS)}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"--mix: the weight of {name!r} is not a number: {value!r}") from None
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"--mix: the weight of {name!r} must be a finite number >= 0")
        weights[name] = weights.get(name, 0.0) + weight
    if sum(weights.values()) <= 0:
        raise ValueError("--mix: no kind has a positive weight")
    return {name: w for name, w in weights.items() if w > 0}


class Mix:
    """Weighted random choice of a request kind (one bisect per pick)."""

    __slots__ = ("_cumulative", "_names", "_total")

    def __init__(self, weights: dict[str, float]) -> None:
        self._names = list(weights)
        self._cumulative: list[float] = []
        total = 0.0
        for name in self._names:
            total += weights[name]
            self._cumulative.append(total)
        self._total = total

    def shares(self) -> dict[str, float]:
        previous = 0.0
        out = {}
        for name, cum in zip(self._names, self._cumulative, strict=True):
            out[name] = (cum - previous) / self._total
            previous = cum
        return out

    def pick(self, rng: random.Random) -> str:
        i = bisect.bisect_right(self._cumulative, rng.random() * self._total)
        return self._names[min(i, len(self._names) - 1)]


def request_body(kind: Kind, model_id: str, real_max_tokens: int) -> dict[str, Any]:
    """The chat completion body of one request of ``kind``."""
    body: dict[str, Any] = {
        "model": model_id,
        "messages": [{"role": "user", "content": PROMPTS[kind.model]}],
        "max_tokens": real_max_tokens if kind.real_tokens else kind.max_tokens,
        "temperature": 0,
        "stream": kind.stream,
    }
    if kind.n != 1:
        body["n"] = kind.n
    if kind.stop:
        body["stop"] = list(kind.stop)
    if kind.stream:
        body["stream_options"] = {"include_usage": True}
    return body


# --- reading answers (cheap byte checks; JSON only where needed) ---

_FINISH = b'"finish_reason":"'


def finish_reason_of(data: bytes) -> str | None:
    """The finish_reason of one SSE chunk (``None`` while the choice goes on)."""
    i = data.find(_FINISH)
    if i < 0:
        return None
    start = i + len(_FINISH)
    end = data.find(b'"', start)
    return data[start:end].decode() if end > start else None


def has_content(data: bytes) -> bool:
    """A chat chunk that carries text (not the role-only opening, not a finish chunk)."""
    return b'"content":"' in data and b'"content":""' not in data


def error_code(raw: bytes) -> str:
    """OpenAI error body (``{"error": {...}}``) -> its ``code``, else its ``type``, else ``unknown``."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "not_json"
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "unknown"
    return str(error.get("code") or error.get("type") or "unknown")


def finish_outcome(kind: Kind, reasons: Sequence[str]) -> str:
    """The outcome of an answer that ended normally with these finish reasons (one per choice)."""
    if len(reasons) < kind.n:
        return "incomplete"
    distinct = sorted(set(reasons))
    bad = [r for r in distinct if kind.expect and r not in kind.expect]
    if bad:
        return "bad_finish:" + "+".join(bad)
    return "ok:" + "+".join(distinct)


def nonstream_outcome(kind: Kind, raw: bytes) -> str:
    try:
        payload = orjson.loads(raw)
        reasons = [str(c["finish_reason"]) for c in payload["choices"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "bad_body"
    return finish_outcome(kind, reasons)


def outcome_class(outcome: str) -> str:
    """ok, disconnect, hung, or error."""
    if outcome.startswith("ok:"):
        return "ok"
    if outcome in ("disconnect", "hung"):
        return outcome
    return "error"


def unexpected(outcome: str, allowed: Sequence[str] = ()) -> bool:
    """An outcome that fails the gate: not ok, not an intended disconnect, not in ``allowed`` (prefixes)."""
    if outcome_class(outcome) in ("ok", "disconnect"):
        return False
    return not any(outcome.startswith(prefix) for prefix in allowed)


@dataclass(slots=True)
class Record:
    kind: str
    start: float  # seconds since the run began
    end: float
    outcome: str
    ttft: float = 0.0  # seconds to the first text (streams), 0 if none


@dataclass(slots=True)
class Sample:
    """One look at the processes, ``t`` seconds into the run (``None``: unknown or gone)."""

    t: float
    gateway_rss_kb: int | None
    gateway_fds: int | None
    gateway_cpu_s: float | None
    triton_pid: int | None
    triton_rss_kb: int | None  # tritonserver and its model processes (Python-backend stubs) together
    log_restarts: int = 0  # "tritonserver exited unexpectedly" lines in the gateway's log so far


# --- aggregation ---


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


def parse_metric(text: str, name: str) -> float | None:
    """The sum of every sample of metric ``name`` in Prometheus text (``None`` when absent)."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name) :]
        if rest[:1] not in ("{", " "):
            continue  # another metric whose name starts alike
        try:
            total += float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        found = True
    return total if found else None


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
    return out


# --- output ---


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
    lines = [
        "",
        f"churn: {s['requests']} requests in {s['window_s']:.0f}s = {s['requests_per_s']:.1f} req/s "
        f"(ok {s['ok_per_s']:.1f}/s), concurrency {result['config']['concurrency']}",
        "classes: " + ", ".join(f"{c} {v}" for c, v in s["classes"].items()),
        "",
        f"{'kind':<16} {'req':>6} {'ok':>6} {'disc':>5} {'other':>5} {'e2e p50':>8} {'p99':>7} {'max':>7} "
        f"{'TTFT p50':>8} {'p99':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    for name, k in s["kinds"].items():
        ok = sum(c for o, c in k["outcomes"].items() if o.startswith("ok:"))
        disc = k["outcomes"].get("disconnect", 0)
        lines.append(
            f"{name:<16} {k['requests']:>6} {ok:>6} {disc:>5} {k['requests'] - ok - disc:>5} "
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
    checks = result.get("final_checks", {})
    lines.append("final checks: " + ", ".join(f"{n} {'ok' if c['ok'] else 'FAILED'}" for n, c in checks.items()))
    fails = result.get("failures", [])
    lines.append("")
    lines.append("PASS" if not fails else "FAIL:\n  - " + "\n  - ".join(fails))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = result["timeline"]
    samples = result["samples"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    ts = [b["t"] for b in buckets]
    axes[0][0].plot(ts, [b["ok"] for b in buckets], label="ok")
    axes[0][0].plot(ts, [b["disconnect"] for b in buckets], label="intended disconnects")
    axes[0][0].set(title="completed requests/s", ylabel="req/s")
    axes[0][1].plot(ts, [b["error"] for b in buckets], color="tab:red", label="errors")
    axes[0][1].plot(ts, [b["hung"] for b in buckets], color="tab:purple", label="hung (client timeout)")
    axes[0][1].set(title="errors/s", ylabel="req/s")
    st = [s["t"] for s in samples]
    axes[1][0].plot(st, [_mb_value(s["gateway_rss_kb"]) for s in samples], label="gateway")
    axes[1][0].plot(st, [_mb_value(s["triton_rss_kb"]) for s in samples], label="tritonserver + model processes")
    axes[1][0].set(title="RSS", xlabel="s", ylabel="MB")
    axes[1][1].plot(st, [s["gateway_fds"] if s["gateway_fds"] is not None else math.nan for s in samples])
    axes[1][1].set(title="gateway open fds", xlabel="s")
    pids = [s["triton_pid"] for s in samples]
    for i in range(1, len(pids)):
        if pids[i] != pids[i - 1]:  # Triton gone or restarted
            for ax in axes.flat:
                ax.axvline(st[i], color="tab:red", alpha=0.4, linestyle="--")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(
        f"churn: concurrency {result['config']['concurrency']}, {result['summary']['requests']} requests "
        "(dashed: tritonserver pid changed)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _mb_value(kb: int | None) -> float:
    return math.nan if kb is None else kb / 1024
