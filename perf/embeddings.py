"""Embeddings per second: the gateway's /v1/embeddings against the same tensors sent straight to Triton, in one run.

Every input is a deterministic English-like text cut at a word boundary to ~``--tokens`` WordPiece tokens
(special tokens included; the counts are checked with the model's own tokenizer.json). Per batch size
(``--batches 1,32,256``) and concurrency (``--concurrency 1,4``: that many requests always in flight), the two
paths take turns round by round (``--rounds``), each for at least ``--seconds`` and ``concurrency`` requests:

- ``gateway``: ``POST /v1/embeddings`` (``encoding_format`` float, aiohttp), one request per batch; the body is
  read whole and its embeddings counted;
- ``direct``: Triton's ModelInfer on ``minilm`` (tritonclient.grpc.aio) with ``input_ids``, ``attention_mask`` and
  ``token_type_ids`` INT64 built as the gateway builds them (same tokenizer, rows sorted by length, padded to the
  longest with the pad id), one request per batch.

Reported per batch size and concurrency: embeddings/s of each path over its rounds, their ratio (gateway/direct;
the goal is >= 0.95 at batch >= 32) with its range over the rounds, the gateway process's CPU per request
(``/proc/<pid>/stat`` before and after its turns; beside it, what the idle gateway burned during the direct
turns) and this client's CPU per request on each path. Then p50/p90 latency of one short input ("hello world"),
one request at a time, through each path, interleaved the same way. Before measuring, the gateway's vectors are
checked against Triton's for the same texts.

    python -m perf.embeddings --launch [--rounds 3] [--batches 1,32,256] [--concurrency 1,4]
    python -m perf.embeddings --gateway http://127.0.0.1:8080 --triton 127.0.0.1:8001 [--gateway-pid PID]

Writes perf/results/embeddings.json and perf/results/embeddings.png, and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from numpy.typing import NDArray
from tokenizers import Tokenizer
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient

from gateway.config import EMBEDDING_MODEL_ID, EMBEDDING_TRITON_MODEL, REPO_ROOT
from perf.metrics import percentile
from perf.stack import positive_ints, process_cpu_seconds, run_loop, save_results, stack_or_running

GATEWAY, DIRECT = "gateway", "direct"
PATHS = (GATEWAY, DIRECT)
SHORT = "hello world"
VARIANTS = 4  # distinct batches per batch size, sent in turn
OUTPUT = "embeddings"
JSON_HEADERS = {"Content-Type": "application/json"}
GOAL = 0.95  # gateway/direct embeddings/s at batch >= GOAL_BATCH
GOAL_BATCH = 32

# --- texts ---

_SUBJECTS = (
    "the engineer",
    "a small team of volunteers",
    "our oldest customer",
    "the river pilot",
    "every student in the class",
    "the head librarian",
    "a quiet fisherman",
    "the research group",
    "my next-door neighbour",
    "the city council",
    "a travelling musician",
    "the night nurse",
    "the new manager",
    "an elderly farmer",
    "the museum guide",
    "a curious child",
)
_VERBS = (
    "reviewed",
    "built",
    "described",
    "carried",
    "measured",
    "painted",
    "discussed",
    "repaired",
    "planned",
    "photographed",
    "questioned",
    "rebuilt",
    "sold",
    "borrowed",
    "cleaned",
    "translated",
)
_OBJECTS = (
    "the narrow wooden bridge",
    "a detailed report on water quality",
    "three heavy boxes of books",
    "the morning train schedule",
    "an unusual painting of the harbour",
    "the broken kitchen window",
    "a long letter from her sister",
    "the budget for the coming year",
    "several maps of the northern valley",
    "the garden behind the school",
    "a recipe for apple bread",
    "the engine of an old tractor",
    "two chapters of the history book",
    "the plans for a new playground",
)
_TAILS = (
    "before the storm arrived",
    "after a long and difficult winter",
    "with surprising care",
    "during the annual meeting",
    "near the rocky northern coast",
    "because the money was running out",
    "while the others were still asleep",
    "in less than a week",
    "without asking anyone for help",
    "on a bright Sunday afternoon",
    "as the market was closing",
    "for the second time this month",
)
_OPENERS = ("", "", "", "Later, ", "Meanwhile, ", "However, ", "In the end, ", "As a result, ", "Last spring, ")


def _sentence(rng: random.Random) -> str:
    text = f"{rng.choice(_OPENERS)}{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if rng.random() < 0.8:
        text += " " + rng.choice(_TAILS)
    return text[0].upper() + text[1:] + "."


def make_texts(tokenizer: Tokenizer, count: int, tokens: int, seed: int = 0) -> list[str]:
    """``count`` distinct English-like texts of ``tokens - 3`` to ``tokens`` tokens each, special tokens
    included, each cut at a word boundary (deterministic for a seed)."""
    rng = random.Random(f"embeddings:{seed}")
    specials = len(tokenizer.encode("a").ids) - len(tokenizer.encode("a", add_special_tokens=False).ids)
    body = tokens - specials
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < count:
        paragraph = _sentence(rng)
        while len(tokenizer.encode(paragraph, add_special_tokens=False).ids) <= body:
            paragraph += " " + _sentence(rng)
        enc = tokenizer.encode(paragraph, add_special_tokens=False)
        words = enc.word_ids
        cut = body  # keep tokens [0, cut): back off while the cut would split a word
        while cut > 0 and words[cut] is not None and words[cut] == words[cut - 1]:
            cut -= 1
        text = paragraph[: enc.offsets[cut - 1][1]]
        if text in seen:
            continue
        n = len(tokenizer.encode(text).ids)
        if not tokens - 3 <= n <= tokens:
            raise RuntimeError(f"a text of {n} tokens, not ~{tokens}: {text!r}")
        seen.add(text)
        texts.append(text)
    return texts


# --- the two paths' requests ---


@dataclass
class Batch:
    """One batch as both paths send it: the gateway's JSON body and Triton's padded tensors."""

    texts: list[str]
    body: bytes
    order: list[int]  # row r of the tensors is texts[order[r]] (sorted by length, as the gateway sorts)
    tensors: dict[str, NDArray[np.int64]]
    inputs: list[InferInput] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.texts)

    @property
    def tokens(self) -> int:
        return int(self.tensors["attention_mask"].sum())


def build_batch(tokenizer: Tokenizer, texts: list[str], model: str, pad_id: int) -> Batch:
    """``texts`` as the gateway sends them to Triton: tokenized with the special tokens, sorted by length
    (stable), right-padded to the longest row with ``pad_id``."""
    encoded = tokenizer.encode_batch(texts, add_special_tokens=True)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    width = max(len(e.ids) for e in encoded)
    ids = np.full((len(texts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    types = np.zeros((len(texts), width), dtype=np.int64)
    for r, i in enumerate(order):
        e = encoded[i]
        ids[r, : len(e.ids)] = e.ids
        mask[r, : len(e.ids)] = 1
        types[r, : len(e.type_ids)] = e.type_ids
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    inputs = []
    for name, array in tensors.items():
        tensor = InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    body = orjson.dumps({"model": model, "input": texts, "encoding_format": "float"})
    return Batch(texts, body, order, tensors, inputs)


class Paths:
    """The two clients: aiohttp to the gateway, tritonclient's gRPC aio client to Triton."""

    def __init__(self, gateway: str, triton: str, model: str, triton_model: str, timeout: float) -> None:
        self.url = gateway.rstrip("/") + "/v1/embeddings"
        self.model = model
        self.triton_model = triton_model
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout)
        )
        self.grpc = InferenceServerClient(url=triton)
        self.outputs = [InferRequestedOutput(OUTPUT)]

    async def close(self) -> None:
        await self.http.close()
        await self.grpc.close()

    async def gateway_raw(self, batch: Batch) -> bytes:
        async with self.http.post(self.url, data=batch.body, headers=JSON_HEADERS) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"gateway HTTP {resp.status}: {raw[:300]!r}")
            return raw

    async def gateway(self, batch: Batch) -> None:
        raw = await self.gateway_raw(batch)
        found = raw.count(b'"embedding":[')  # a cheap check: parsing ~2 MB of floats is the client's cost
        if found != batch.size:
            raise RuntimeError(f"gateway: {found} embeddings for {batch.size} inputs")

    async def gateway_vectors(self, batch: Batch) -> NDArray[np.float32]:
        payload = orjson.loads(await self.gateway_raw(batch))
        rows = sorted(payload["data"], key=lambda d: d["index"])
        return np.asarray([d["embedding"] for d in rows], dtype=np.float32)

    async def direct_vectors(self, batch: Batch) -> NDArray[np.float32]:
        result = await self.grpc.infer(self.triton_model, batch.inputs, outputs=self.outputs)
        array = result.as_numpy(OUTPUT)
        if array is None or array.shape[0] != batch.size:
            raise RuntimeError(f"direct: {None if array is None else array.shape} for {batch.size} inputs")
        vectors: NDArray[np.float32] = array
        return vectors

    async def direct(self, batch: Batch) -> None:
        await self.direct_vectors(batch)

    def send(self, path: str) -> Callable[[Batch], Awaitable[None]]:
        return self.gateway if path == GATEWAY else self.direct


async def agreement(paths: Paths, batch: Batch) -> float:
    """The largest difference between the gateway's vectors and Triton's for the same batch."""
    mine = await paths.gateway_vectors(batch)
    theirs = await paths.direct_vectors(batch)
    unsorted = np.empty_like(theirs)
    unsorted[batch.order] = theirs
    if mine.shape != unsorted.shape:
        raise RuntimeError(f"gateway vectors {mine.shape}, direct {unsorted.shape}")
    return float(np.abs(mine - unsorted).max())


# --- measuring ---


@dataclass
class Turn:
    """One path's turn at one batch size and concurrency in one round."""

    requests: int = 0
    errors: int = 0
    embeddings: int = 0
    wall_s: float = 0.0
    gateway_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    first_error: str = ""

    @property
    def per_s(self) -> float:
        return self.embeddings / self.wall_s if self.wall_s > 0 else math.nan


async def closed_loop(
    send: Callable[[Batch], Awaitable[None]], batches: list[Batch], concurrency: int, seconds: float, pid: int
) -> Turn:
    """``concurrency`` requests always in flight until ``seconds`` have passed and at least
    ``concurrency`` were sent; the wall time runs to the last answer."""
    turn = Turn()
    minimum = concurrency
    issued = 0
    cpu0, gw0 = time.process_time(), process_cpu_seconds(pid)
    start = time.monotonic()
    deadline = start + seconds
    last = start

    async def worker() -> None:
        nonlocal issued, last
        while time.monotonic() < deadline or issued < minimum:
            batch = batches[issued % len(batches)]
            issued += 1
            try:
                await send(batch)
            except Exception as exc:
                turn.errors += 1
                turn.first_error = turn.first_error or f"{type(exc).__name__}: {exc}"[:300]
            else:
                turn.embeddings += batch.size
            turn.requests += 1
            last = time.monotonic()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    turn.wall_s = last - start
    turn.client_cpu_s = time.process_time() - cpu0
    turn.gateway_cpu_s = process_cpu_seconds(pid) - gw0
    return turn


def _pooled(turns: list[Turn], pid: int) -> dict[str, Any]:
    requests = sum(t.requests for t in turns)
    embeddings = sum(t.embeddings for t in turns)
    wall = sum(t.wall_s for t in turns)
    gateway_cpu = sum(t.gateway_cpu_s for t in turns)
    return {
        "requests": requests,
        "errors": sum(t.errors for t in turns),
        "first_error": next((t.first_error for t in turns if t.first_error), ""),
        "embeddings": embeddings,
        "wall_s": wall,
        "embeddings_per_s": embeddings / wall if wall > 0 else math.nan,
        "rounds_embeddings_per_s": [t.per_s for t in turns],
        "gateway_cpu_ms_per_request": gateway_cpu / requests * 1000 if pid and requests else None,
        "gateway_cpu_us_per_embedding": gateway_cpu / embeddings * 1e6 if pid and embeddings else None,
        "gateway_cpu_cores": gateway_cpu / wall if pid and wall > 0 else None,
        "client_cpu_ms_per_request": sum(t.client_cpu_s for t in turns) / requests * 1000 if requests else None,
    }


async def measure(args: argparse.Namespace, tokenizer: Tokenizer, pid: int) -> dict[str, Any]:
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    biggest = max(args.batches)
    texts = make_texts(tokenizer, biggest * VARIANTS, args.tokens, args.seed)
    counts = [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=True)]
    text_stats: dict[str, float] = {"count": len(texts), "tokens_min": min(counts), "tokens_max": max(counts)}
    text_stats["tokens_mean"] = sum(counts) / len(counts)
    _say(f"{len(texts)} texts of {text_stats['tokens_min']}-{text_stats['tokens_max']} tokens")
    batches = {
        size: [
            build_batch(tokenizer, texts[v * biggest : v * biggest + size], args.model, pad_id) for v in range(VARIANTS)
        ]
        for size in args.batches
    }
    short = [build_batch(tokenizer, [SHORT], args.model, pad_id)]
    paths = Paths(args.gateway, args.triton, args.model, args.triton_model, args.request_timeout)
    try:
        # also the warm-up: every batch shape once through each path, not counted
        agree = {size: await agreement(paths, bs[0]) for size, bs in batches.items()}
        agree[0] = await agreement(paths, short[0])
        worst = max(agree.values())
        _say(f"the gateway's vectors match Triton's within {worst:.2e}")
        if worst > 1e-3:
            raise SystemExit(f"the gateway's embeddings differ from Triton's by {worst:.3g}: not the same tensors?")
        turns: dict[tuple[int, int, str], list[Turn]] = {}
        latencies: dict[str, list[float]] = {p: [] for p in PATHS}
        for rnd in range(args.rounds):
            order = PATHS if rnd % 2 == 0 else PATHS[::-1]  # who goes first alternates
            for size in args.batches:
                for conc in args.concurrency:
                    for path in order:
                        turn = await closed_loop(paths.send(path), batches[size], conc, args.seconds, pid)
                        turns.setdefault((size, conc, path), []).append(turn)
                        _say(
                            f"round {rnd + 1}/{args.rounds} batch {size:>3} concurrency {conc} {path:<7} "
                            f"{turn.per_s:8.1f} embeddings/s ({turn.requests} requests in {turn.wall_s:.1f}s"
                            + (f", {turn.errors} errors: {turn.first_error}" if turn.errors else "")
                            + ")"
                        )
            for path in order:
                send = paths.send(path)
                for _ in range(args.latency_requests):
                    t0 = time.monotonic()
                    await send(short[0])
                    latencies[path].append(time.monotonic() - t0)
            _say(
                f"round {rnd + 1}/{args.rounds} '{SHORT}' p50 "
                + ", ".join(f"{p} {percentile(latencies[p], 50) * 1000:.1f} ms" for p in PATHS)
            )
    finally:
        await paths.close()
    results = []
    for size in args.batches:
        for conc in args.concurrency:
            gw, direct = (_pooled(turns[(size, conc, p)], pid) for p in PATHS)
            rounds = [
                g.per_s / d.per_s if d.per_s > 0 else math.nan
                for g, d in zip(turns[(size, conc, GATEWAY)], turns[(size, conc, DIRECT)], strict=True)
            ]
            ratio = gw["embeddings_per_s"] / direct["embeddings_per_s"] if direct["embeddings_per_s"] else math.nan
            if pid:  # what the gateway burns when idle (probes, timers), from its CPU during the direct turns
                idle = direct["gateway_cpu_cores"] or 0.0
                net = (gw["gateway_cpu_cores"] - idle) * gw["wall_s"]
                gw["gateway_idle_cores"] = idle
                gw["gateway_net_cpu_ms_per_request"] = net / gw["requests"] * 1000 if gw["requests"] else None
                gw["gateway_net_cpu_us_per_embedding"] = net / gw["embeddings"] * 1e6 if gw["embeddings"] else None
            results.append(
                {
                    "batch": size,
                    "concurrency": conc,
                    "tokens_per_request": batches[size][0].tokens,
                    GATEWAY: gw,
                    DIRECT: direct,
                    "ratio": ratio,
                    "rounds_ratio": rounds,
                    "goal": GOAL if size >= GOAL_BATCH else None,
                    "meets_goal": ratio >= GOAL if size >= GOAL_BATCH else None,
                }
            )
    latency: dict[str, Any] = {
        p: {
            "requests": len(v),
            "p50_ms": percentile(v, 50) * 1000,
            "p90_ms": percentile(v, 90) * 1000,
            "mean_ms": sum(v) / len(v) * 1000 if v else math.nan,
        }
        for p, v in latencies.items()
    }
    latency["added_p50_ms"] = latency[GATEWAY]["p50_ms"] - latency[DIRECT]["p50_ms"]
    return {
        "texts": text_stats,
        "max_abs_diff_gateway_vs_direct": worst,
        "results": results,
        "short_input_latency": latency,
    }


# --- output ---


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    texts = result["texts"]
    lines = [
        "",
        f"embeddings/s, {texts['tokens_min']}-{texts['tokens_max']} tokens per input "
        f"({result['config']['rounds']} interleaved rounds; ratio = gateway / direct, [min-max over the rounds])",
        f"{'batch':>5} {'conc':>4} {'gateway':>9} {'direct':>9} {'ratio':>6} {'rounds':>13} {'goal':>5} "
        f"{'gw CPU ms/req':>13} {'net':>7} {'net µs/emb':>10} {'client ms/req gw/dir':>20}",
    ]
    lines.append("-" * len(lines[-1]))
    for r in result["results"]:
        gw, d = r[GATEWAY], r[DIRECT]
        rounds = [x for x in r["rounds_ratio"] if not math.isnan(x)]
        spread = f"[{min(rounds):.2f}-{max(rounds):.2f}]" if rounds else "-"
        goal = "-" if r["meets_goal"] is None else ("ok" if r["meets_goal"] else "MISS")
        client = f"{_f(gw['client_cpu_ms_per_request'], 2)}/{_f(d['client_cpu_ms_per_request'], 2)}"
        lines.append(
            f"{r['batch']:>5} {r['concurrency']:>4} {gw['embeddings_per_s']:>9.1f} {d['embeddings_per_s']:>9.1f} "
            f"{r['ratio']:>6.3f} {spread:>13} {goal:>5} {_f(gw['gateway_cpu_ms_per_request'], 2):>13} "
            f"{_f(gw.get('gateway_net_cpu_ms_per_request'), 2):>7} "
            f"{_f(gw.get('gateway_net_cpu_us_per_embedding'), 0):>10} "
            f"{client:>20}"
        )
        errors = gw["errors"] + d["errors"]
        if errors:
            lines.append(f"      {errors} failed request(s): {gw['first_error'] or d['first_error']}")
    idle = [r[GATEWAY].get("gateway_idle_cores") for r in result["results"]]
    shown = [x * 1000 for x in idle if x is not None]
    lines.append(
        "(gw CPU: the gateway process's CPU per gateway request; net: less what it burns idle, "
        + (f"{min(shown):.1f}-{max(shown):.1f} ms/s during the direct turns)" if shown else "unknown)")
    )
    lat = result["short_input_latency"]
    lines.append("")
    lines.append(f"'{SHORT}', one request at a time:")
    for p in PATHS:
        lines.append(
            f"  {p:<7} p50 {lat[p]['p50_ms']:6.2f} ms  p90 {lat[p]['p90_ms']:6.2f} ms  "
            f"mean {lat[p]['mean_ms']:6.2f} ms  ({lat[p]['requests']} requests)"
        )
    lines.append(f"  the gateway adds {lat['added_p50_ms']:.2f} ms at p50")
    lines.append(f"gateway vectors vs Triton's: max |difference| {result['max_abs_diff_gateway_vs_direct']:.2e}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    sizes = sorted({r["batch"] for r in rows})
    concs = sorted({r["concurrency"] for r in rows})
    by = {(r["batch"], r["concurrency"]): r for r in rows}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    width = 0.8 / (2 * len(concs))
    x = np.arange(len(sizes))
    ax = axes[0][0]
    for j, conc in enumerate(concs):
        for k, p in enumerate(PATHS):
            values = [by[(s, conc)][p]["embeddings_per_s"] for s in sizes]
            offset = (2 * j + k - len(concs) + 0.5) * width
            ax.bar(x + offset, values, width, label=f"{p}, concurrency {conc}", alpha=0.6 + 0.4 * (k == 0))
    ax.set(title="embeddings/s", xticks=x, xticklabels=[str(s) for s in sizes], xlabel="inputs per request")
    ax = axes[0][1]
    for conc in concs:
        ratios = [by[(s, conc)]["ratio"] for s in sizes]
        lows = [r - min(by[(s, conc)]["rounds_ratio"]) for r, s in zip(ratios, sizes, strict=True)]
        highs = [max(by[(s, conc)]["rounds_ratio"]) - r for r, s in zip(ratios, sizes, strict=True)]
        ax.errorbar(x, ratios, yerr=[lows, highs], marker="o", capsize=4, label=f"concurrency {conc}")
    ax.axhline(GOAL, color="tab:red", linestyle="--", alpha=0.6, label=f"goal {GOAL} (batch >= {GOAL_BATCH})")
    ax.set(title="gateway / direct (bars: range over rounds)", xticks=x, xticklabels=[str(s) for s in sizes])
    ax.set_xlabel("inputs per request")
    ax = axes[1][0]
    for conc in concs:
        ax.plot(
            x,
            [by[(s, conc)][GATEWAY].get("gateway_net_cpu_us_per_embedding") or math.nan for s in sizes],
            marker="o",
            label=f"concurrency {conc}",
        )
    ax.set(title="gateway CPU per embedding (net of idle)", ylabel="µs", xticks=x, xticklabels=[str(s) for s in sizes])
    ax.set_xlabel("inputs per request")
    ax.set_yscale("log")
    ax = axes[1][1]
    lat = result["short_input_latency"]
    for k, stat in enumerate(("p50_ms", "p90_ms")):
        ax.bar(np.arange(len(PATHS)) + (k - 0.5) * 0.35, [lat[p][stat] for p in PATHS], 0.35, label=stat[:3])
    ax.set(title=f"'{SHORT}' latency, one at a time", ylabel="ms", xticks=np.arange(len(PATHS)))
    ax.set_xticklabels(PATHS)
    for a in axes.flat:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    texts = result["texts"]
    fig.suptitle(
        f"{result['config']['model']}: gateway vs Triton direct, {texts['tokens_min']}-{texts['tokens_max']} "
        f"tokens per input, {result['config']['rounds']} rounds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- command line ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.embeddings", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--launch", action="store_true", help="start `python -m gateway serve` on free ports")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="a running gateway (without --launch)")
    parser.add_argument("--triton", default="127.0.0.1:8001", help="its Triton's gRPC HOST:PORT (without --launch)")
    parser.add_argument("--gateway-pid", type=int, default=0, help="default: who listens on the gateway's port")
    parser.add_argument("--model", default=EMBEDDING_MODEL_ID, help="model id at the gateway")
    parser.add_argument("--triton-model", default=EMBEDDING_TRITON_MODEL)
    parser.add_argument(
        "--tokenizer", type=Path, default=REPO_ROOT / "model_repository" / "minilm" / "weights" / "tokenizer.json"
    )
    parser.add_argument(
        "--batches", type=positive_ints, default=[1, 32, 256], help="inputs per request (default 1,32,256)"
    )
    parser.add_argument("--concurrency", type=positive_ints, default=[1, 4], help="requests in flight (default 1,4)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each path takes, interleaved")
    parser.add_argument("--seconds", type=float, default=2.0, help="least duration of one turn (s)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per input, special tokens included")
    parser.add_argument("--latency-requests", type=int, default=30, help="'hello world' requests per path and round")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.latency_requests < 1:
        parser.error("--rounds and --latency-requests must be >= 1, --seconds > 0")
    if not 8 <= args.tokens <= 256:
        parser.error("--tokens must be in [8, 256] (the model's context is 256)")
    return args


def _say(line: str) -> None:
    print(f"[embeddings] {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    started = time.monotonic()
    log = args.out / "embeddings_stack.log"
    with stack_or_running(args.launch, args.gateway, args.triton, args.gateway_pid, log) as target:
        args.gateway, args.triton, pid = target.gateway, target.triton, target.pid
        if not pid:
            _say("the gateway's pid is unknown (pass --gateway-pid): no gateway CPU figures")
        figures = run_loop(measure(args, tokenizer, pid))
    _, wrote = save_results(args, "embeddings", {"gateway_pid": pid, **figures}, started, plot, format_table)
    print(wrote)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
