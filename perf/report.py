"""The printed summary and the PNG plots of a benchmark run."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

DIRECT = "direct"
# the results' "mode", as printed: in full, and short
MODE_TITLES = {"concurrency": "closed loop", "burst": "bursts of 2 x concurrency", "rate": "open loop (req/s)"}
MODE_NAMES = {"concurrency": "closed", "burst": "burst", "rate": "open"}

# Issue 13's goals for the gateway against Triton direct, in closed loop and in bursts: added TTFT p50 and p99
# (ms) at the concurrency levels it names, and aggregate output tokens/s at every level up to 64.
TTFT_P50_GOAL_MS = {8: 2.0, 32: 5.0}
TTFT_P99_GOAL_MS = {32: 10.0}
THROUGHPUT_GOAL = 0.95
THROUGHPUT_GOAL_UP_TO = 64


def _minus(a: dict[str, Any], b: dict[str, Any], metric: str, stat: str) -> float:
    value: float = a[metric][stat] - b[metric][stat]
    return value


def _throughput_ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(a["output_tokens_per_s"] / b["output_tokens_per_s"]) if b["output_tokens_per_s"] else math.nan


def gateway_vs_direct(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level and gateway target: added TTFT/ITL (gateway minus direct) and throughput ratio."""
    by_level: dict[Any, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        by_level[r["level"]][r["target"]] = r
    out = []
    for level, targets in by_level.items():
        direct = targets.get(DIRECT)
        if direct is None:
            continue
        for name, r in targets.items():
            if name == DIRECT:
                continue
            out.append(
                {
                    "level": level,
                    "target": name,
                    "added_ttft_p50_ms": _minus(r, direct, "ttft_ms", "p50"),
                    "added_ttft_p99_ms": _minus(r, direct, "ttft_ms", "p99"),
                    "added_itl_p99_ms": _minus(r, direct, "itl_ms", "p99"),
                    "throughput_ratio": _throughput_ratio(r, direct),
                }
            )
    return out


def goals_at(level: int) -> dict[str, float | None]:
    """Issue 13's goal for each gateway-vs-direct figure at a concurrency level (None: no goal there)."""
    return {
        "added_ttft_p50_ms": TTFT_P50_GOAL_MS.get(level),
        "added_ttft_p99_ms": TTFT_P99_GOAL_MS.get(level),
        "throughput_ratio": THROUGHPUT_GOAL if level <= THROUGHPUT_GOAL_UP_TO else None,
    }


def goal_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's goals, per mode, level and gateway target, for the closed loop and bursts (not the open
    loop, whose levels are rates): each figure with its goal (None where the issue sets none at that level)
    and whether it is met (None likewise); ``met`` is all of them together."""
    out = []
    for mode, subset in by_mode(results).items():
        if mode == "rate":
            continue
        for d in gateway_vs_direct(subset):
            level = int(d["level"])
            row: dict[str, Any] = {"mode": mode, "level": d["level"], "target": d["target"]}
            for key, goal in goals_at(level).items():
                value = d[key]
                row[key], row[key + "_goal"] = value, goal
                row[key + "_met"] = (
                    None if goal is None else value >= goal if key == "throughput_ratio" else value <= goal
                )
            verdicts = [row[k] for k in row if k.endswith("_met") and row[k] is not None]
            row["met"] = all(verdicts) if verdicts else None
            out.append(row)
    return out


def by_mode(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The results split by their "mode" (closed loop when absent), in order of appearance."""
    modes: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        modes.setdefault(r.get("mode", "concurrency"), []).append(r)
    return modes


def _verdict(met: bool | None) -> str:
    return "-" if met is None else "PASS" if met else "MISS"


def _goal_cell(value: float, goal: float | None, met: bool | None, sign: str, digits: int) -> str:
    shown = "-" if goal is None else f"{sign} {goal:g}"
    return f"{value:>11.{digits}f} {shown:>7} {_verdict(met):>4}"


def print_goals(goals: list[dict[str, Any]]) -> None:
    """The goals table: each figure next to issue 13's goal, PASS/MISS (- where there is no goal)."""
    if not goals:
        return
    print("\nissue 13 goals, gateway - direct (added TTFT in ms; tok/s ratio = aggregate output tokens/s vs direct)")
    head = (
        f"{'mode':<12} {'level':>5} {'target':<20} {'+TTFT p50':>11} {'goal':>7} {'':>4} "
        f"{'+TTFT p99':>11} {'goal':>7} {'':>4} {'tok/s ratio':>11} {'goal':>7} {'':>4} {'all':>4}"
    )
    print(head + "\n" + "-" * len(head))
    for g in goals:
        print(
            f"{MODE_NAMES.get(g['mode'], g['mode']):<12} {g['level']:>5g} {g['target']:<20} "
            + _goal_cell(g["added_ttft_p50_ms"], g["added_ttft_p50_ms_goal"], g["added_ttft_p50_ms_met"], "<=", 2)
            + " "
            + _goal_cell(g["added_ttft_p99_ms"], g["added_ttft_p99_ms_goal"], g["added_ttft_p99_ms_met"], "<=", 2)
            + " "
            + _goal_cell(g["throughput_ratio"], g["throughput_ratio_goal"], g["throughput_ratio_met"], ">=", 3)
            + f" {_verdict(g['met']):>4}"
        )


def variants_vs_default(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per level, each ``TARGET@NAME`` (a gateway launched with --compare) against ``TARGET``."""
    by_key = {(r["level"], r["target"]): r for r in results}
    out = []
    for r in results:
        base, _, variant = r["target"].partition("@")
        default = by_key.get((r["level"], base))
        if not variant or default is None:
            continue
        mine, theirs = r["cpu"]["gateway_us_per_token"], default["cpu"]["gateway_us_per_token"]
        out.append(
            {
                "level": r["level"],
                "target": base,
                "variant": variant,
                "gateway_us_per_token": theirs,
                "variant_gateway_us_per_token": mine,
                "cpu_ratio": theirs / mine if mine and theirs else math.nan,
                "ttft_p50_ms_minus_variant": _minus(default, r, "ttft_ms", "p50"),
                "itl_p99_ms_minus_variant": _minus(default, r, "itl_ms", "p99"),
                "throughput_ratio": _throughput_ratio(default, r),
            }
        )
    return out


def print_table(results: list[dict[str, Any]], idle_wake_us: float | None = None) -> None:
    """Per mode: every figure, the gateway-minus-direct deltas, the --compare table; then the goals."""
    for mode, subset in by_mode(results).items():
        print(f"\n=== {MODE_TITLES.get(mode, mode)} ===")
        _print_mode(subset)
    print_goals(goal_checks(results))
    print("(times in ms; ok = completed/requests; gen/gw us/tok = CPU microseconds per output token)")
    if idle_wake_us is not None:
        print(
            f"(one wake-up of an idle process costs {idle_wake_us:.0f} us of CPU on this machine: at low load, "
            "when each token wakes the process, per-token CPU cannot fall below it)"
        )


def _print_mode(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'level':>6} {'target':<20} {'ok':>7} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>7} "
        f"{'TPOT p50':>9} {'tok/s':>8} {'req/s':>6} {'goodput':>7} {'gen us/tok':>10} {'gw us/tok':>9}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        cpu = r["cpu"]
        gw = cpu["gateway_us_per_token"]
        print(
            f"{r['level']:>6g} {r['target']:<20} {r['completed']:>3}/{r['requests']:<3} "
            f"{r['ttft_ms']['p50']:>9.2f} {r['ttft_ms']['p99']:>8.2f} {r['itl_ms']['p50']:>8.2f} "
            f"{r['itl_ms']['p99']:>7.2f} {r['tpot_ms']['p50']:>9.2f} {r['output_tokens_per_s']:>8.0f} "
            f"{r['requests_per_s']:>6.1f} {r['goodput_requests_per_s']:>7.1f} "
            f"{cpu['generator_us_per_token']:>10.1f} {'' if gw is None else f'{gw:.1f}':>9}"
        )
    deltas = gateway_vs_direct(results)
    if deltas:
        cols = f"{'+TTFT p50':>10} {'+TTFT p99':>10} {'+ITL p99':>9} {'tok/s ratio':>11}"
        print(f"\n{'level':>6} {'gateway target':<20} {cols}")
        for d in deltas:
            print(
                f"{d['level']:>6g} {d['target']:<20} {d['added_ttft_p50_ms']:>10.2f} {d['added_ttft_p99_ms']:>10.2f} "
                f"{d['added_itl_p99_ms']:>9.2f} {d['throughput_ratio']:>11.3f}"
            )
    compared = variants_vs_default(results)
    if compared:
        print(
            f"\n{'level':>6} {'target':<20} {'vs':<12} {'gw us/tok':>9} {'vs us/tok':>9} {'CPU ratio':>9} "
            f"{'TTFT p50 -':>10} {'ITL p99 -':>9} {'tok/s ratio':>11}"
        )
        for c in compared:
            print(
                f"{c['level']:>6g} {c['target']:<20} {c['variant']:<12} {c['gateway_us_per_token']:>9.1f} "
                f"{c['variant_gateway_us_per_token']:>9.1f} {c['cpu_ratio']:>9.3f} "
                f"{c['ttft_p50_ms_minus_variant']:>10.2f} {c['itl_p99_ms_minus_variant']:>9.2f} "
                f"{c['throughput_ratio']:>11.3f}"
            )
        print(
            "(the default gateway against the one launched with --compare: CPU ratio < 1 means the default "
            "spends less per token)"
        )


def plot_all(results: list[dict[str, Any]], rows: list[dict[str, Any]], base: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(by_mode(results))
    # one series per (mode, target); named by target alone when the run has one mode
    series = sorted(
        {(r.get("mode", "concurrency"), r["target"]) for r in results}, key=lambda s: (modes.index(s[0]), s[1])
    )

    def name(mode: str, target: str) -> str:
        return target if len(modes) == 1 else f"{target} ({MODE_NAMES.get(mode, mode)})"

    levels = sorted({r["level"] for r in results})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for mode, target in series:
        mine = sorted(
            (r for r in results if r["target"] == target and r.get("mode", "concurrency") == mode),
            key=lambda r: r["level"],
        )
        xs = [r["level"] for r in mine]
        label = name(mode, target)
        axes[0][0].plot(xs, [r["output_tokens_per_s"] for r in mine], "o-", label=label)
        axes[0][1].plot(xs, [r["ttft_ms"]["p50"] for r in mine], "o-", label=f"{label} p50")
        axes[0][1].plot(xs, [r["ttft_ms"]["p99"] for r in mine], "x--", label=f"{label} p99")
        axes[1][0].plot(xs, [r["itl_ms"]["p99"] for r in mine], "o-", label=label)
    axes[0][0].set(title="output tokens/s (aggregate)", xlabel="load level", ylabel="tokens/s")
    axes[0][1].set(title="TTFT", xlabel="load level", ylabel="ms")
    axes[1][0].set(title="inter-token latency p99", xlabel="load level", ylabel="ms")
    ttfts = [
        [
            row["ttft_ms"]
            for row in rows
            if row["target"] == t and row.get("mode", "concurrency") == m and row["ttft_ms"] is not None
        ]
        for m, t in series
    ]
    if any(ttfts):
        axes[1][1].boxplot(ttfts, showfliers=False)
        axes[1][1].set_xticks(range(1, len(series) + 1), [name(m, t) for m, t in series], rotation=15)
    axes[1][1].set(title=f"TTFT distribution, all levels ({', '.join(f'{lv:g}' for lv in levels)})", ylabel="ms")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(f"{base}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
