"""The churn benchmark's plot: throughput, errors, RSS and fds over the run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


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
