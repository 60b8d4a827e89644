"""perf/capacity.py's own logic: the synthetic config it writes, which processes are the gateway's, the
tokens inside a window, the pooled figures, and the qualification and planning arithmetic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from perf.capacity import (
    DIRECT,
    Limits,
    Turn,
    compare,
    format_table,
    gateway_processes,
    model_repository,
    planning,
    plot,
    pooled,
    synthetic_config,
    window_tokens,
)
from perf.metrics import RequestRecord

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = REPO / "model_repository" / "synthetic"
H100 = {"ttft_ms": "10", "ttft_per_stream_ms": "1.1", "token_delay_ms": "10"}


def test_synthetic_config_sets_the_parameters_and_keeps_the_rest() -> None:
    original = (SYNTHETIC / "config.pbtxt").read_text()
    config = text_format.Parse(synthetic_config(original, H100), model_config_pb2.ModelConfig())
    before = text_format.Parse(original, model_config_pb2.ModelConfig())
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        **{k: v.string_value for k, v in before.parameters.items()},
        **H100,
    }
    assert config.name == "synthetic" and config.model_transaction_policy.decoupled
    assert [i.name for i in config.input] == [i.name for i in before.input]
    assert [o.name for o in config.output] == [o.name for o in before.output]


def test_the_repository_keeps_the_cheap_defaults() -> None:
    config = text_format.Parse((SYNTHETIC / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.parameters["ttft_ms"].string_value == "20"
    assert config.parameters["token_delay_ms"].string_value == "5"
    assert "ttft_per_stream_ms" not in config.parameters  # the model's default: 0, a constant TTFT


def test_model_repository_links_the_models_and_writes_synthetic(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "synthetic" / "1").mkdir(parents=True)
    (source / "synthetic" / "1" / "model.py").write_text("# model\n")
    (source / "synthetic" / "config.pbtxt").write_text((SYNTHETIC / "config.pbtxt").read_text())
    (source / "other" / "1").mkdir(parents=True)
    (source / ".prepared").write_text("")
    with model_repository(source, H100) as repo:
        assert sorted(p.name for p in repo.iterdir()) == ["other", "synthetic"]
        assert (repo / "other").is_symlink() and (repo / "other").resolve() == (source / "other").resolve()
        assert (repo / "synthetic" / "1" / "model.py").read_text() == "# model\n"
        assert not (repo / "synthetic" / "config.pbtxt").is_symlink()
        written = (repo / "synthetic" / "config.pbtxt").read_text()
        assert 'key: "ttft_per_stream_ms"' in written and 'string_value: "1.1"' in written
    assert not repo.exists()
    assert (source / "synthetic" / "1" / "model.py").exists() and (source / "other" / "1").is_dir()  # untouched


def test_gateway_processes_are_the_tree_less_triton() -> None:
    table = {
        100: ("python", "S", 1),  # gateway serve (with --workers: the supervisor)
        101: ("tritonserver", "S", 100),
        102: ("triton_python_b", "S", 101),  # a Python-backend model process
        103: ("python", "S", 100),  # worker 1
        104: ("python", "S", 100),  # worker 2
        105: ("python", "S", 100),  # multiprocessing's resource tracker
        106: ("python", "S", 103),  # something a worker started
        200: ("python", "S", 1),  # someone else
        201: ("tritonserver", "S", 200),
    }
    assert sorted(gateway_processes(table, 100)) == [100, 103, 104, 105, 106]
    assert gateway_processes(table, 101) == [101, 102]  # the root itself is never dropped
    assert gateway_processes(table, 999) == []


def record(start: float, chunks: list[float], tokens: int, error: str | None = None) -> RequestRecord:
    r = RequestRecord("t", start, end=chunks[-1] if chunks else start, error=error)
    r.first_token = chunks[0] if chunks else 0.0
    r.chunk_times = list(chunks)
    r.output_tokens = tokens
    return r


def test_window_tokens_counts_what_arrived_inside() -> None:
    a = record(0.0, [0.5, 1.0, 1.5, 2.0, 2.5], 5)  # one token per chunk: 1.0, 1.5 inside [1, 2)
    b = record(0.0, [1.2, 1.8], 6)  # three tokens per chunk, both inside
    c = record(0.0, [], 0, error="http_503")
    d = record(0.0, [1.1, 1.3], 0)  # no usage seen: a chunk counts one token
    assert window_tokens([a, b, c, d], 1.0, 2.0) == pytest.approx(2 + 6 + 0 + 2)
    assert window_tokens([], 0.0, 1.0) == 0.0


def test_pooled_uses_the_windows() -> None:
    fast = [record(0.0, [0.01 + 0.01 * i for i in range(100)], 100) for _ in range(3)]  # 100 tok/s each
    slow = record(0.0, [0.1 + 0.02 * i for i in range(51)], 51)  # 50 tok/s
    turns = [
        Turn(fast[:2], window_s=2.0, tokens=300.0, gateway_cpu_s=0.5, triton_cpu_s=0.4, generator_cpu_s=0.2),
        Turn([fast[2], slow], window_s=2.0, tokens=100.0, gateway_cpu_s=0.3, triton_cpu_s=0.4, generator_cpu_s=0.2),
    ]
    f = pooled(turns)
    assert f["output_tokens_per_s"] == pytest.approx(400 / 4)
    assert f["stream_tokens_per_s_p50"] == pytest.approx(100.0)
    assert f["gateway_cores"] == pytest.approx(0.8 / 4)
    assert f["triton_cores"] == pytest.approx(0.2) and f["generator_cores"] == pytest.approx(0.1)
    assert f["completed"] == 4 and f["errors"] == 0
    assert f["itl_ms"]["p50"] == pytest.approx(10.0)
    unknown = pooled([Turn([], window_s=1.0, gateway_cpu_s=None, triton_cpu_s=None)])
    assert unknown["gateway_cores"] is None and unknown["triton_cores"] is None
    assert math.isnan(unknown["stream_tokens_per_s_p50"])


def figures(
    tps: float = 99.0,
    stream_tps: float = 99.5,
    itl_p99: float = 11.0,
    cores: float | None = 0.5,
    errors: int = 0,
    ttft: tuple[float, float] = (20.0, 40.0),
) -> dict[str, Any]:
    return {
        "output_tokens_per_s": tps,
        "stream_tokens_per_s_p50": stream_tps,
        "ttft_ms": {"p50": ttft[0], "p99": ttft[1]},
        "itl_ms": {"p50": 10.0, "p99": itl_p99},
        "gateway_cores": cores,
        "triton_cores": 0.6,
        "generator_cores": 0.4,
        "errors": errors,
        "cancelled": 0,
    }


def test_compare_qualifies_a_good_level() -> None:
    direct = figures(tps=1000.0, itl_p99=10.0, cores=0.01)
    row = compare("w1", 10, figures(tps=990.0, itl_p99=11.5, cores=0.25), direct, Limits())
    assert row["qualifies"] and row["why_not"] == []
    assert row["streams_per_core"] == pytest.approx(40.0)
    assert row["tokens_per_s_per_core"] == pytest.approx(3960.0)
    assert row["tokens_per_s_ratio"] == pytest.approx(0.99)
    assert row["added_itl_p99_ms"] == pytest.approx(1.5)
    assert row["machine_cores"] == pytest.approx(0.25 + 0.6 + 0.4)


def test_compare_says_why_a_level_does_not_qualify() -> None:
    limits = Limits(min_stream_tps=95, max_added_itl_ms=2)
    direct = figures(stream_tps=97.0, itl_p99=10.0)
    slow = compare("w1", 50, figures(stream_tps=80.0, itl_p99=15.0), direct, limits)
    assert not slow["qualifies"]
    assert slow["why_not"] == ["80.0 tok/s per stream < 95", "added ITL p99 +5.00 ms > 2 ms"]
    starved = compare("w2", 100, figures(stream_tps=60.0, itl_p99=10.5), figures(stream_tps=70.0), limits)
    assert starved["why_not"] == ["60.0 tok/s per stream < 95 (direct 70.0 too: this machine cannot feed the level)"]
    broken = compare("w1", 10, figures(errors=3, cores=None), direct, limits)
    assert broken["why_not"] == ["3 failed requests", "no gateway CPU figure"]
    assert broken["streams_per_core"] is None and broken["machine_cores"] is None
    empty = compare("w1", 10, figures(stream_tps=math.nan, itl_p99=math.nan), direct, limits)
    assert not empty["qualifies"] and len(empty["why_not"]) == 2  # NaN never qualifies


def test_planning_takes_the_most_streams_per_core_that_qualifies() -> None:
    direct = figures(itl_p99=10.0, cores=0.01)
    rows = [
        compare("w1", 10, figures(cores=0.3), direct, Limits()),  # 33 streams/core
        compare("w1", 25, figures(cores=0.5), direct, Limits()),  # 50
        compare("w1", 50, figures(cores=0.6, itl_p99=14.0), direct, Limits()),  # 83, but +4 ms ITL
        compare("w2", 25, figures(cores=0.625), direct, Limits()),  # 40
    ]
    plan = planning(rows, Limits(), 2)
    assert plan["streams_per_core"] == pytest.approx(50.0)
    assert (plan["gateway"], plan["streams"]) == ("w1", 25)
    assert plan["text"].startswith("50 streams per gateway core (25 streams on 0.50 cores, gateway w1;")


def test_planning_explains_when_nothing_qualifies() -> None:
    direct = figures(stream_tps=80.0, itl_p99=10.0)
    rows = [compare("w1", 100, figures(stream_tps=60.0, itl_p99=30.0, cores=1.1), direct, Limits())]
    plan = planning(rows, Limits(), 2)
    assert plan["streams_per_core"] is None and plan["streams"] is None
    assert plan["text"].splitlines() == [
        "no level qualifies (per-stream tok/s >= 95 and added ITL p99 <= 2 ms):",
        "  w1 at 100 streams: 60.0 tok/s per stream < 95 (direct 80.0 too: this machine cannot feed the level); "
        "added ITL p99 +20.00 ms > 2 ms",
        "  this machine's 2 cores are shared by Triton, the load generator and the gateway: together they used up "
        "to 2.10 cores in a gateway turn",
    ]


def test_table_and_plot(tmp_path: Path) -> None:
    limits = Limits()
    direct = figures(tps=1000.0, itl_p99=10.0, cores=0.01)
    levels, rows = [], []
    for streams, cores in ((10, 0.25), (25, 0.5)):
        gw = {**figures(tps=streams * 99.0, cores=cores), "errors": 0}
        levels.append({"streams": streams, DIRECT: direct, "gateways": {"w1": gw}})
        rows.append(compare("w1", streams, gw, direct, limits))
    result = {
        "config": {"output_tokens": 128, "rounds": 2, "seconds": 3.0},
        "upstream": H100,
        "cpus": 2,
        "limits": {"min_stream_tps": 95.0, "max_added_itl_ms": 2.0},
        "levels": levels,
        "rows": rows,
        "planning": planning(rows, limits, 2),
    }
    table = format_table(result)
    assert "TTFT 10 ms + 1.1 ms per running stream, 10 ms per token" in table
    assert "planning figure: 50 streams per gateway core" in table
    assert plot(result, tmp_path / "capacity.png").stat().st_size > 0
