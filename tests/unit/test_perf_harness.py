"""The load generator's own logic: SSE parsing across arbitrary chunk boundaries, and metrics."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from perf.bench import burst_shares, fire_bursts, parse_modes
from perf.metrics import SLO, RequestRecord, distribution, percentile, summarize
from perf.report import gateway_vs_direct, goal_checks, plot_all, print_table, variants_vs_default
from perf.sse import SSEParser
from perf.stack import parse_compare

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


def test_variants_vs_default() -> None:
    def result(target: str, ttft: float, itl: float, tps: float, cpu: float) -> dict[str, object]:
        return {
            "level": 8,
            "target": target,
            "ttft_ms": {"p50": ttft},
            "itl_ms": {"p99": itl},
            "output_tokens_per_s": tps,
            "cpu": {"gateway_us_per_token": cpu},
        }

    results = [
        result("gateway-chat", 12, 1.0, 1000, 80),
        result("gateway-chat@stock", 14, 1.5, 800, 100),
        result("gateway-completions@stock", 14, 1.5, 800, 100),  # no default to compare with: skipped
        result("direct", 10, 1, 1000, 0),
    ]
    assert variants_vs_default(results) == [
        {
            "level": 8,
            "target": "gateway-chat",
            "variant": "stock",
            "gateway_us_per_token": 80,
            "variant_gateway_us_per_token": 100,
            "cpu_ratio": 0.8,
            "ttft_p50_ms_minus_variant": -2,
            "itl_p99_ms_minus_variant": -0.5,
            "throughput_ratio": 1.25,
        }
    ]


def testparse_compare() -> None:
    parser = argparse.ArgumentParser()
    assert parse_compare("stock:GRPC_EXPERIMENTS=,GATEWAY_EVENT_LOOP=asyncio", parser) == (
        "stock",
        {"GRPC_EXPERIMENTS": "", "GATEWAY_EVENT_LOOP": "asyncio"},
    )
    assert parse_compare("x:A=b=c", parser) == ("x", {"A": "b=c"})
    for bad in ("stock", ":A=1", "a@b:A=1", "stock:novalue"):
        with pytest.raises(SystemExit):
            parse_compare(bad, parser)


async def test_fire_bursts_starts_each_burst_together_after_the_last_one_ended() -> None:
    events: list[tuple[str, int, float]] = []  # (start|end, in flight, loop time)
    in_flight = 0
    loop = asyncio.get_running_loop()

    async def one() -> int:
        nonlocal in_flight
        in_flight += 1
        events.append(("start", in_flight, loop.time()))
        await asyncio.sleep(0.01 * in_flight)  # the requests of one burst end at different times
        in_flight -= 1
        events.append(("end", in_flight, loop.time()))
        return len(events)

    out = await fire_bursts(one, requests=10, size=4)
    assert len(out) == 10
    kinds = "".join("s" if kind == "start" else "e" for kind, _, _ in events)
    assert kinds == "sssseeeesssseeeessee"  # bursts of 4, 4 and the last 2, never overlapping
    assert max(n for kind, n, _ in events if kind == "start") == 4
    starts = [t for kind, _, t in events if kind == "start"]
    assert max(starts[:4]) - min(starts[:4]) < 0.005  # one burst: started at the same instant
    assert await fire_bursts(one, requests=0, size=4) == []


@pytest.mark.parametrize(
    ("requests", "concurrency", "parts", "expected"),
    [
        (32, 8, 1, [(32, 8, 16)]),  # 2 bursts of 2 x 8
        (20, 8, 1, [(32, 8, 16)]),  # rounded up to whole bursts
        (128, 32, 2, [(64, 16, 32), (64, 16, 32)]),  # each process fires half of each burst
        (10, 3, 2, [(8, 2, 4), (4, 1, 2)]),  # 2 bursts of 6, split 4 + 2
        (16, 1, 2, [(16, 1, 2)]),  # more processes than streams: one process
    ],
)
def test_burst_shares(requests: int, concurrency: int, parts: int, expected: list[tuple[int, int, int]]) -> None:
    shares = burst_shares(requests, concurrency, parts)
    assert shares == expected
    assert sum(size for _, _, size in shares) == 2 * concurrency  # together: 2 x the concurrency at once
    assert len({n // size for n, _, size in shares}) == 1  # the same number of bursts in every process


def test_parse_modes() -> None:
    parser = argparse.ArgumentParser()
    assert parse_modes("closed", parser) == ["concurrency"]  # the results' name for the closed loop, as before
    assert parse_modes("burst", parser) == ["burst"]
    assert parse_modes("closed, burst", parser) == ["concurrency", "burst"]
    for bad in ("", "open", "closed,closed", "bursts"):
        with pytest.raises(SystemExit):
            parse_modes(bad, parser)


def _level_result(mode: str, level: float, target: str, ttft_p50: float, ttft_p99: float, tps: float) -> dict[str, Any]:
    def dist(p50: float, p99: float) -> dict[str, float]:
        return {"p50": p50, "p90": p99, "p99": p99, "max": p99, "mean": p50}

    return {
        "level": level,
        "mode": mode,
        "target": target,
        "requests": 32,
        "completed": 32,
        "ttft_ms": dist(ttft_p50, ttft_p99),
        "itl_ms": dist(5.0, 6.0),
        "tpot_ms": dist(5.0, 5.5),
        "output_tokens_per_s": tps,
        "requests_per_s": 10.0,
        "goodput_requests_per_s": 10.0,
        "cpu": {"generator_us_per_token": 100.0, "gateway_us_per_token": 150.0},
    }


GOAL_RESULTS = [
    # closed loop: at 8 streams +1.5 ms p50 (goal 2) and x0.96: pass; at 32 +6 ms p50 (goal 5): miss
    _level_result("concurrency", 8, "gateway-chat", 31.5, 40.0, 960.0),
    _level_result("concurrency", 8, "direct", 30.0, 35.0, 1000.0),
    _level_result("concurrency", 32, "gateway-chat", 46.0, 59.0, 1000.0),
    _level_result("concurrency", 32, "direct", 40.0, 50.0, 1000.0),
    # bursts: at 8 +2.5 ms p50: miss; at 32 +4 ms p50, +12 ms p99 (goal 10): miss; at 1 and 64 only the ratio
    _level_result("burst", 8, "gateway-chat", 32.5, 40.0, 1000.0),
    _level_result("burst", 8, "direct", 30.0, 35.0, 1000.0),
    _level_result("burst", 32, "gateway-chat", 44.0, 62.0, 990.0),
    _level_result("burst", 32, "direct", 40.0, 50.0, 1000.0),
    _level_result("burst", 1, "gateway-chat", 25.0, 30.0, 940.0),
    _level_result("burst", 1, "direct", 20.0, 21.0, 1000.0),
    _level_result("burst", 128, "gateway-chat", 90.0, 99.0, 500.0),  # past 64: no goal at all
    _level_result("burst", 128, "direct", 40.0, 50.0, 1000.0),
    # the open loop's levels are rates: no goals
    _level_result("rate", 8, "gateway-chat", 50.0, 60.0, 500.0),
    _level_result("rate", 8, "direct", 30.0, 35.0, 1000.0),
]


def test_goal_checks_per_mode_and_level() -> None:
    checks = {(g["mode"], g["level"], g["target"]): g for g in goal_checks(GOAL_RESULTS)}
    assert set(checks) == {
        ("concurrency", 8, "gateway-chat"),
        ("concurrency", 32, "gateway-chat"),
        ("burst", 8, "gateway-chat"),
        ("burst", 32, "gateway-chat"),
        ("burst", 1, "gateway-chat"),
        ("burst", 128, "gateway-chat"),
    }

    def verdicts(key: tuple[str, int, str]) -> tuple[bool | None, ...]:
        g = checks[key]
        return tuple(g[k] for k in ("added_ttft_p50_ms_met", "added_ttft_p99_ms_met", "throughput_ratio_met", "met"))

    closed8 = checks[("concurrency", 8, "gateway-chat")]
    assert closed8["added_ttft_p50_ms"] == pytest.approx(1.5) and closed8["added_ttft_p50_ms_goal"] == 2.0
    assert closed8["added_ttft_p99_ms_goal"] is None and closed8["throughput_ratio"] == pytest.approx(0.96)
    assert verdicts(("concurrency", 8, "gateway-chat")) == (True, None, True, True)
    assert verdicts(("concurrency", 32, "gateway-chat")) == (False, True, True, False)
    assert verdicts(("burst", 8, "gateway-chat")) == (False, None, True, False)
    assert verdicts(("burst", 32, "gateway-chat")) == (True, False, True, False)
    assert checks[("burst", 32, "gateway-chat")]["added_ttft_p99_ms_goal"] == 10.0
    assert verdicts(("burst", 1, "gateway-chat")) == (None, None, False, False)  # x0.94
    assert verdicts(("burst", 128, "gateway-chat")) == (None, None, None, None)
    nan = _level_result("burst", 8, "gateway-chat", math.nan, math.nan, 0.0)
    assert goal_checks([nan, GOAL_RESULTS[5]])[0]["met"] is False  # no figure is not a pass


def test_print_table_per_mode_with_goals(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(GOAL_RESULTS, idle_wake_us=50.0)
    out = capsys.readouterr().out
    sections = [line for line in out.splitlines() if line.startswith("===")]
    assert sections == ["=== closed loop ===", "=== bursts of 2 x concurrency ===", "=== open loop (req/s) ==="]
    goals = out[out.index("issue 13 goals") :].splitlines()
    rows = {tuple(line.split()[:3]): line.split() for line in goals if line.startswith(("closed", "burst"))}
    closed8 = "closed 8 gateway-chat 1.50 <= 2 PASS 5.00 - - 0.960 >= 0.95 PASS PASS"
    assert rows[("closed", "8", "gateway-chat")] == closed8.split()
    assert rows[("burst", "32", "gateway-chat")][-1] == "MISS"
    assert rows[("burst", "32", "gateway-chat")][7:11] == ["12.00", "<=", "10", "MISS"]
    assert not any(line.startswith("open") for line in goals)


def test_plot_all_with_two_modes(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [
        {"mode": r["mode"], "target": r["target"], "ttft_ms": r["ttft_ms"]["p50"]}
        for r in GOAL_RESULTS
        if r["mode"] != "rate"
    ]
    results = [r for r in GOAL_RESULTS if r["mode"] != "rate"]
    assert plot_all(results, rows, tmp_path / "bench") == [tmp_path / "bench.png"]
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_direct_request_matches_the_workload() -> None:
    from perf.targets import Workload, direct_request

    w = Workload([{"role": "user", "content": "hi"}], chat_ids=[5, 6, 7], prompt_ids=[5], output_tokens=9)
    req = direct_request("synthetic", w)
    assert req.model_name == "synthetic"
    assert req.parameters["triton_enable_empty_final_response"].bool_param
    assert len(req.inputs) == len(req.raw_input_contents) == 6
    pairs = zip(req.inputs, req.raw_input_contents, strict=True)
    tensors = {t.name: (t.datatype, list(t.shape), raw) for t, raw in pairs}
    assert len(tensors) == 6

    def values(name: str) -> list[int]:
        datatype, shape, raw = tensors[name]
        array = np.frombuffer(raw, dtype=np.int32 if datatype == "INT32" else np.bool_)
        assert array.size == math.prod(shape)
        return [int(v) for v in array]

    assert tensors["input_ids"][:2] == ("INT32", [1, 3]) and values("input_ids") == [5, 6, 7]
    assert values("input_lengths") == [3]
    assert values("request_output_len") == values("min_tokens") == [9]  # exact output length
    assert values("runtime_top_k") == [1]  # greedy, as the gateway targets ask
    assert tensors["streaming"][0] == "BOOL" and values("streaming") == [1]
    assert [o.name for o in req.outputs] == ["output_ids"]


# perf/features.py: the structured-output, tools and logprobs benchmark


def test_feature_request_bodies() -> None:
    from perf.features import VARIANTS, request_body

    for variant in VARIANTS:
        body = request_body(variant, "m", 64)
        assert body["model"] == "m" and body["max_tokens"] == 64 and body["temperature"] == 0
        assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert request_body("plain")["ignore_eos"] and request_body("logprobs")["ignore_eos"]
    assert "ignore_eos" not in request_body("json_schema") and "ignore_eos" not in request_body("tools")
    assert request_body("logprobs")["top_logprobs"] == 5
    assert request_body("tools")["tool_choice"] == "required" and len(request_body("tools")["tools"]) == 2
    assert request_body("json_schema")["response_format"]["type"] == "json_schema"


def test_feature_scan_counts_content_and_tool_calls_not_logprobs() -> None:
    from perf.features import scan

    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    assert not scan(role).output
    text = {"choices": [{"delta": {"content": "hi"}, "logprobs": {"content": [{"token": "hi"}]}}]}
    assert scan(text).output and scan(text).content == "hi"
    only_logprobs = {"choices": [{"delta": {}, "logprobs": {"content": [{"token": "x", "logprob": -1.0}]}}]}
    assert not scan(only_logprobs).output
    call = {
        "choices": [{"delta": {"tool_calls": [{"index": 1, "id": "c", "function": {"name": "f", "arguments": ""}}]}}]
    }
    assert scan(call).output and scan(call).calls == ((1, "f", ""),)
    args = {"choices": [{"delta": {"tool_calls": [{"index": 1, "function": {"arguments": '{"a"'}}]}}]}
    assert scan(args).calls == ((1, "", '{"a"'),)
    end = {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}
    assert scan(end).finish == "tool_calls" and not scan(end).output
    usage = {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 7}}
    s = scan(usage)
    assert (s.completion_tokens, s.prompt_tokens, s.output) == (7, 40, False)
    assert scan({"choices": [], "usage": None}).completion_tokens is None


def test_feature_record_metrics_and_tool_markup() -> None:
    from perf.features import Record, tool_markup

    r = Record("new", "tools", 1, start=10.0, first=10.5, last=12.5, end=12.6, tokens=41)
    assert r.ok and r.ttft == pytest.approx(0.5) and r.tokens_per_s == pytest.approx(20.0)
    assert not Record("new", "plain", 1, start=0.0, tokens=3).ok  # no output arrived
    assert Record("new", "plain", 1, start=0.0, first=1.0, last=1.0, tokens=1).tokens_per_s == 0.0
    r.calls = {1: ["b", "{}"], 0: ["a", '{"x":1}']}
    first, second = '{"name":"a","arguments":{"x":1}}', '{"name":"b","arguments":{}}'
    expected = f"<tool_call>\n{first}\n</tool_call>\n<tool_call>\n{second}\n</tool_call>"
    assert r.output_text() == tool_markup([("a", '{"x":1}'), ("b", "{}")]) == expected
    r.calls, r.content = {}, ["{", '"a":1}']
    assert r.output_text() == '{"a":1}'


def test_feature_summary_compare_and_goals() -> None:
    from perf.features import NEW, REF, Record, compare, goals, summarize

    def rec(ttft: float, tokens: int, span: float, error: str | None = None) -> Record:
        return Record("s", "plain", 1, 0.0, first=ttft, last=ttft + span, end=ttft + span, tokens=tokens, error=error)

    s = summarize([rec(0.1, 11, 1.0), rec(0.3, 21, 1.0), rec(0.2, 5, 1.0, "http_500")], 4.0, 0.032, 1.6)
    assert (s["requests"], s["ok"], s["errors"]) == (3, 2, {"http_500": 1})
    assert s["ttft_ms"]["p50"] == pytest.approx(200) and s["output_tokens"] == 32
    assert s["tokens_per_s_per_stream"]["p50"] == pytest.approx(15.0)
    assert s["aggregate_tokens_per_s"] == 8.0
    assert s["gateway_cpu_us_per_token"] == pytest.approx(1000) and s["engine_cpu_us_per_token"] == pytest.approx(50000)

    def cell(ttft: float, tps: float, agg: float) -> dict[str, object]:
        return {
            "ttft_ms": {"p50": ttft},
            "tokens_per_s_per_stream": {"p50": tps},
            "aggregate_tokens_per_s": agg,
            "gateway_cpu_us_per_token": 500.0,
            "engine_cpu_us_per_token": 20000.0,
        }

    cells = {
        (REF, "plain", 1): cell(150, 40, 38),
        (NEW, "plain", 1): cell(155, 39, 37),
        (REF, "plain", 4): cell(1600, 40, 75),
        (NEW, "plain", 4): cell(450, 35, 140),
        (NEW, "tools", 4): cell(900, 30, 100),  # no ref: not compared
    }
    rows = compare(cells)
    assert [r["level"] for r in rows] == [1, 4]
    assert rows[0]["ttft_p50_ms"] == {"new": 155, "ref": 150, "ratio": pytest.approx(155 / 150)}
    assert rows[1]["aggregate_tokens_per_s"]["ratio"] == pytest.approx(140 / 75)
    met = {g["goal"]: g["met"] for g in goals(rows)}
    assert met == {
        "1 stream: tokens/s within 5% of ref": True,  # x0.975
        "1 stream: TTFT p50 within 5% of ref": True,  # x1.033
        "4 streams: TTFT p50 <= 500 ms": True,
        "4 streams: aggregate tokens/s >= 2x ref": False,  # x1.87
    }
    assert goals([]) == []


def test_feature_ref_env_runs_the_worktree() -> None:
    from perf.features import ref_env

    env = ref_env(Path("/tmp/tree"), Path("/tmp/cache"))
    assert env == {"PYTHONSAFEPATH": "1", "PYTHONPATH": "/tmp/tree", "GATEWAY_CACHE_DIR": "/tmp/cache"}


def test_feature_grammar_guides_are_the_gateways() -> None:
    from gateway.embedded.lm.grammar import check_guide
    from perf.features import grammar_guides

    guides = grammar_guides()
    assert guides["json_schema"][0] == "json_schema" and guides["tools"][0] == "ebnf_grammar"
    for kind, text in guides.values():
        check_guide(kind, text)


def test_feature_grammar_cost_smoke() -> None:
    from perf.features import grammar_cost

    weights = Path(__file__).resolve().parents[2] / "model_repository" / "smollm2" / "weights"
    if not (weights / "tokenizer.json").is_file():
        pytest.skip(f"no {weights / 'tokenizer.json'}")
    paths = {"json_schema": '{"items":["dog","cat","bird"'}  # a prefix: 20 items at least make it complete
    out = grammar_cost(weights, paths, samples=40, blocks=2)
    assert set(out["kinds"]) == {"none", "json_schema/random", "json_schema/steered", "tools/random"}
    steered = out["kinds"]["json_schema/steered"]
    assert steered["derailed"] == 0 and steered["sequences"] >= 1 and steered["path_tokens"] > 0
    assert all(k["us_mean"] > 0 for k in out["kinds"].values())


def test_tiny_pooled_compare_and_net_cpu() -> None:
    from perf.tiny import GOAL_US, Turn, compare, pooled

    gw = pooled(
        [
            Turn(latencies=[0.030] * 90, errors=10, wall_s=1.0, gateway_cpu_s=0.05),
            Turn(latencies=[0.030] * 100, wall_s=1.0, gateway_cpu_s=0.05),
        ],
        True,
    )
    assert gw["requests"] == 200 and gw["errors"] == 10
    assert gw["requests_per_s"] == pytest.approx(95.0)  # successful requests only
    assert gw["rounds_requests_per_s"] == pytest.approx([90.0, 100.0])
    assert gw["gateway_cpu_us_per_request"] == pytest.approx(500.0)
    assert gw["gateway_cpu_ms_per_s"] == pytest.approx(50.0)
    direct = pooled([Turn(latencies=[0.020] * 100, wall_s=1.0, gateway_cpu_s=0.01, client_cpu_s=0.08)], True)
    assert direct["client_cpu_us_per_request"] == pytest.approx(800.0)  # the bare client's own cost
    out = compare(gw, direct)
    assert out["requests_per_s_vs_direct"] == pytest.approx(0.95)
    assert out["added_p50_ms"] == pytest.approx(10.0) and out["added_p99_ms"] == pytest.approx(10.0)
    # 0.1 s of CPU over 2 s, less 10 ms/s idle: 80 ms over 200 requests
    assert out["gateway_net_cpu_us_per_request"] == pytest.approx(400.0)
    assert out["meets_goal"] is True and GOAL_US == 400.0
    blind = compare(
        pooled([Turn(latencies=[0.03], wall_s=1.0)], False), pooled([Turn(latencies=[0.02], wall_s=1.0)], False)
    )
    assert blind["gateway_cpu_us_per_request"] is None and blind["meets_goal"] is None
    assert math.isnan(pooled([], True)["p50_ms"])


def test_tiny_cpu_against_a_baseline() -> None:
    from perf.tiny import cpu_ratio

    assert cpu_ratio({"gateway_net_cpu_us_per_request": 1500.0}, {"gateway_net_cpu_us_per_request": 2000.0}) == 0.75
    assert cpu_ratio({"gateway_net_cpu_us_per_request": None}, {"gateway_net_cpu_us_per_request": 2000.0}) is None
    assert cpu_ratio({"gateway_net_cpu_us_per_request": 1500.0}, {}) is None


def test_tiny_gateway_share_over_the_transport_floor() -> None:
    from perf.tiny import over_floor

    net = "gateway_net_cpu_us_per_request"
    assert over_floor({net: 1300.0}, {net: 600.0}) == 700.0
    assert over_floor({net: None}, {net: 600.0}) is None
    assert over_floor({net: 1300.0}, {}) is None


def test_overhead_summary_gives_the_gateway_share_over_the_floor_per_request_and_per_token(tmp_path: Path) -> None:
    from perf.overhead import format_table, parse_args, plot, summary

    figures = {
        "gateway-stream": [900.0, 880.0, 1000.0],
        "gateway-whole": [860.0],
        "floor-stream": [450.0, 440.0, 460.0],
        "floor-whole": [430.0],
    }
    one = summary(figures, 1)
    assert one["arms"]["gateway-stream"]["median_us"] == 900.0
    assert one["own"]["stream"] == {"us_per_request": 450.0, "ratio": 2.0, "us_per_token": None}
    assert one["own"]["whole"]["us_per_request"] == 430.0
    many = summary(figures, 10)
    assert many["own"]["stream"]["us_per_token"] == pytest.approx(45.0)
    assert "45.0 µs per token" in format_table(many) and "2.00 × the floor" in format_table(many)
    split = summary({**figures, "engine-stream": [530.0], "engine-whole": [520.0], "grpc-alone": [220.0]}, 1)
    assert split["own"]["stream"]["client_us"] == 80.0 and split["own"]["stream"]["api_us"] == 370.0
    assert split["arms"]["grpc-alone"]["median_us"] == 220.0 and "its Triton client 80 µs" in format_table(split)
    alone = summary({"gateway-stream": [250.0], "gateway-whole": [240.0]}, 1)  # the stand-in: no floor
    assert "own" not in alone and "gateway-whole" in format_table(alone)
    path = plot({**one, "config": {"engine": "triton"}}, tmp_path / "o.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):  # the stand-in answers one token only
        parse_args(["--tokens", "4"])
    assert parse_args(["--engine", "triton", "--tokens", "4"]).tokens == 4


def test_tiny_top_inclusive_counts_each_function_once_per_stack() -> None:
    from perf.tiny import top_inclusive

    raw = "main (a.py:1);run (a.py:5);run (a.py:5);leaf (b.py:2) 3\nmain (a.py:1);other (c.py:9) 1\nnot a sample line\n"
    top = dict(top_inclusive(raw))
    assert top["main (a.py:1)"] == pytest.approx(1.0)
    assert top["run (a.py:5)"] == pytest.approx(0.75)  # recursion counted once
    assert top["other (c.py:9)"] == pytest.approx(0.25)
    assert top_inclusive(raw, 1) == [("main (a.py:1)", pytest.approx(1.0))]
    assert top_inclusive("") == []


def test_save_results_writes_json_plot_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from perf.stack import save_results

    def plot(result: dict[str, Any], path: Path) -> Path:
        path.write_bytes(b"png")
        return path

    args = argparse.Namespace(out=tmp_path / "results", rounds=2)
    result, wrote = save_results(args, "x", {"figure": 1.5}, time.monotonic(), plot, lambda r: f"table {r['figure']}")
    saved = json.loads((tmp_path / "results" / "x.json").read_text())
    assert saved == result and saved["figure"] == 1.5 and saved["config"]["out"] == str(tmp_path / "results")
    assert saved["config"]["rounds"] == 2 and saved["elapsed_s"] >= 0 and saved["cpus"]
    assert (tmp_path / "results" / "x.png").read_bytes() == b"png"
    assert "table 1.5" in capsys.readouterr().out and str(tmp_path / "results" / "x.json") in wrote
