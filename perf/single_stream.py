"""One stream at a time, gateway against Triton direct, interleaved in one run.

The same greedy request (chat template applied by the gateway's tokenizer, fixed output length via
``ignore_eos``) goes alternately (a) through the gateway's OpenAI chat endpoint over SSE and
(b) straight to Triton over gRPC (``ModelStreamInfer`` on a bare grpc.aio stub, the same token ids), using the load
generator's own targets (:mod:`perf.targets`) and metrics (:mod:`perf.metrics`). It prints medians
and gateway/direct ratios, and writes a JSON file and a PNG plot.

    python -m perf.single_stream --gateway http://127.0.0.1:8080 --triton 127.0.0.1:8001 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import grpc
from tritonclient.grpc import service_pb2_grpc

from gateway.config import REPO_ROOT
from gateway.text.tokenizer import Tokenizer
from perf import targets
from perf.bench import workload
from perf.metrics import RequestRecord

TARGETS = ("gateway-chat", "direct")


def summarize(runs: list[RequestRecord]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for target in TARGETS:
        mine = [r for r in runs if r.target == target]
        out[target] = {
            "ttft_ms_p50": statistics.median(r.ttft * 1000 for r in mine),
            "tokens_per_s_p50": statistics.median(r.tokens_per_s for r in mine),
            "tokens": statistics.median(r.output_tokens for r in mine),
            "runs": len(mine),
        }
    g, d = out["gateway-chat"], out["direct"]
    out["ratio"] = {
        "ttft_gateway_over_direct": g["ttft_ms_p50"] / d["ttft_ms_p50"],
        "tokens_per_s_gateway_over_direct": g["tokens_per_s_p50"] / d["tokens_per_s_p50"],
        "ttft_added_ms": g["ttft_ms_p50"] - d["ttft_ms_p50"],
    }
    return out


def plot(runs: list[RequestRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for target, color in zip(TARGETS, ("tab:blue", "tab:orange"), strict=True):
        mine = [r for r in runs if r.target == target]
        ax1.plot([r.ttft * 1000 for r in mine], "o-", color=color, label=target)
        ax2.plot([r.tokens_per_s for r in mine], "o-", color=color, label=target)
    ax1.set(title="TTFT per run", xlabel="run", ylabel="ms")
    ax2.set(title="output tokens/s per run", xlabel="run", ylabel="tokens/s")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--triton", default="127.0.0.1:8001")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="OpenAI model id at the gateway")
    parser.add_argument("--triton-model", default="smollm2")
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO_ROOT / "model_repository" / "smollm2" / "weights")
    parser.add_argument("--input-tokens", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5, help="runs per target, interleaved")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args()

    w = workload(Tokenizer(args.tokenizer_dir), args.input_tokens, args.tokens)
    channel = grpc.aio.insecure_channel(args.triton)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    direct = targets.direct_request(args.triton_model, w)
    runs: list[RequestRecord] = []
    async with aiohttp.ClientSession() as session:
        for i in range(args.warmup + args.runs):
            pair = [
                await targets.gateway_chat(session, args.gateway, args.model, w),
                await targets.triton_direct(stub, direct, w),
            ]
            for r in pair:
                if not r.ok:
                    raise SystemExit(f"{r.target} failed: {r.error}")
            label = "warm-up" if i < args.warmup else f"run {i - args.warmup + 1}/{args.runs}"
            print(
                f"{label:>10}: "
                + "  ".join(f"{r.target} ttft {r.ttft * 1000:6.1f} ms {r.tokens_per_s:5.1f} tok/s" for r in pair),
                file=sys.stderr,
                flush=True,
            )
            if i >= args.warmup:
                runs.extend(pair)
    await channel.close()

    summary = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    json_path = args.out / f"single_stream_{stamp}.json"
    png_path = args.out / f"single_stream_{stamp}.png"
    config = {k: str(v) for k, v in vars(args).items()}
    json_path.write_text(json.dumps({"config": config, "summary": summary, "runs": [r.row() for r in runs]}, indent=2))
    plot(runs, png_path)
    g, d, ratio = summary["gateway-chat"], summary["direct"], summary["ratio"]
    print(f"\n{'target':<14}{'TTFT p50 (ms)':>15}{'tokens/s p50':>15}{'tokens':>8}")
    print(f"{'gateway-chat':<14}{g['ttft_ms_p50']:>15.1f}{g['tokens_per_s_p50']:>15.1f}{g['tokens']:>8.0f}")
    print(f"{'direct':<14}{d['ttft_ms_p50']:>15.1f}{d['tokens_per_s_p50']:>15.1f}{d['tokens']:>8.0f}")
    print(
        f"gateway/direct: TTFT x{ratio['ttft_gateway_over_direct']:.3f} "
        f"({ratio['ttft_added_ms']:+.1f} ms), tokens/s x{ratio['tokens_per_s_gateway_over_direct']:.3f}"
    )
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
