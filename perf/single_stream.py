"""One stream at a time, gateway against Triton direct, interleaved in one run.

The same greedy request (chat template applied by the gateway's tokenizer, fixed output length via
``ignore_eos``) goes alternately (a) through the gateway's OpenAI chat endpoint over SSE and
(b) straight to Triton over gRPC (``ModelStreamInfer`` with the same token ids). For each run it
records TTFT (to the first non-empty content / first token) and output tokens/s after the first
token, then prints medians and gateway/direct ratios, and writes a JSON file and a PNG plot.

    python -m perf.single_stream --gateway http://127.0.0.1:8080 --triton 127.0.0.1:8001 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import orjson

from gateway.config import REPO_ROOT
from gateway.core.types import GenerateRequest, SamplingParams
from gateway.engine.triton import TritonClient
from gateway.text.tokenizer import Tokenizer

PROMPT = [{"role": "user", "content": "Write a detailed story about a lighthouse keeper."}]


@dataclass
class Run:
    target: str
    ttft_ms: float
    tokens: int
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        # decode rate after the first token, as genai-perf's "output token throughput per request"
        decode_s = self.total_s - self.ttft_ms / 1000
        return (self.tokens - 1) / decode_s if decode_s > 0 else 0.0


async def via_gateway(session: aiohttp.ClientSession, url: str, model: str, tokens: int) -> Run:
    body = {"model": model, "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = 0.0
    count = 0
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            event = orjson.loads(line[6:])
            if event.get("usage"):
                count = event["usage"]["completion_tokens"]
            for choice in event.get("choices", ()):
                if not first and choice["delta"].get("content"):
                    first = time.perf_counter() - start
    return Run("gateway", first * 1000, count, time.perf_counter() - start)


async def via_triton(client: TritonClient, model: str, ids: list[int], tokens: int) -> Run:
    contract = await client.contract(model)
    request = GenerateRequest("perf", ids, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True))
    start = time.perf_counter()
    first = 0.0
    count = 0
    async for new in client.generate(contract, request, -1, None):
        if not first:
            first = time.perf_counter() - start
        count += len(new)
    return Run("direct", first * 1000, count, time.perf_counter() - start)


def summarize(runs: list[Run]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for target in ("gateway", "direct"):
        mine = [r for r in runs if r.target == target]
        out[target] = {
            "ttft_ms_p50": statistics.median(r.ttft_ms for r in mine),
            "tokens_per_s_p50": statistics.median(r.tokens_per_s for r in mine),
            "tokens": statistics.median(r.tokens for r in mine),
            "runs": len(mine),
        }
    g, d = out["gateway"], out["direct"]
    out["ratio"] = {
        "ttft_gateway_over_direct": g["ttft_ms_p50"] / d["ttft_ms_p50"],
        "tokens_per_s_gateway_over_direct": g["tokens_per_s_p50"] / d["tokens_per_s_p50"],
        "ttft_added_ms": g["ttft_ms_p50"] - d["ttft_ms_p50"],
    }
    return out


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for target, color in (("gateway", "tab:blue"), ("direct", "tab:orange")):
        mine = [r for r in runs if r.target == target]
        ax1.plot([r.ttft_ms for r in mine], "o-", color=color, label=target)
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
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5, help="runs per target, interleaved")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args()

    tokenizer = Tokenizer(args.tokenizer_dir)
    ids = tokenizer.encode(tokenizer.apply_chat_template(PROMPT))
    client = TritonClient(args.triton)
    runs: list[Run] = []
    async with aiohttp.ClientSession() as session:
        total = args.warmup + args.runs
        for i in range(total):
            pair = [
                await via_gateway(session, args.gateway, args.model, args.tokens),
                await via_triton(client, args.triton_model, ids, args.tokens),
            ]
            label = "warm-up" if i < args.warmup else f"run {i - args.warmup + 1}/{args.runs}"
            print(
                f"{label:>10}: "
                + "  ".join(f"{r.target} ttft {r.ttft_ms:6.1f} ms {r.tokens_per_s:5.1f} tok/s" for r in pair),
                file=sys.stderr,
                flush=True,
            )
            if i >= args.warmup:
                runs.extend(pair)
    await client.close()

    summary = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    json_path = args.out / f"single_stream_{stamp}.json"
    png_path = args.out / f"single_stream_{stamp}.png"
    json_path.write_text(
        json.dumps(
            {
                "config": {k: str(v) for k, v in vars(args).items()},
                "summary": summary,
                "runs": [asdict(r) for r in runs],
            },
            indent=2,
        )
    )
    plot(runs, png_path)
    g, d, ratio = summary["gateway"], summary["direct"], summary["ratio"]
    print(f"\n{'target':<10}{'TTFT p50 (ms)':>15}{'tokens/s p50':>15}{'tokens':>8}")
    print(f"{'gateway':<10}{g['ttft_ms_p50']:>15.1f}{g['tokens_per_s_p50']:>15.1f}{g['tokens']:>8.0f}")
    print(f"{'direct':<10}{d['ttft_ms_p50']:>15.1f}{d['tokens_per_s_p50']:>15.1f}{d['tokens']:>8.0f}")
    print(
        f"gateway/direct: TTFT x{ratio['ttft_gateway_over_direct']:.3f} "
        f"({ratio['ttft_added_ms']:+.1f} ms), tokens/s x{ratio['tokens_per_s_gateway_over_direct']:.3f}"
    )
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
