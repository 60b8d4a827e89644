"""Structured outputs, tools and logprobs on the CPU model, streamed through the gateway, and the engine against an
older revision's, in one run.

Every request is a streamed chat completion (``stream_options.include_usage``), greedy, ``max_tokens`` 128, with
the same user message. Variants:

- ``plain``: ``ignore_eos``, so exactly 128 tokens;
- ``json_schema``: ``response_format`` with an object holding an array of 20 to 40 short strings (no
  ``ignore_eos``: what the model generates is counted);
- ``logprobs``: ``logprobs`` with ``top_logprobs`` 5, ``ignore_eos``;
- ``tools``: two tools, ``tool_choice`` ``required``.

At each concurrency level (``--concurrency 1,4``) every round sends each variant ``--batches`` batches of that
many requests fired together, the variants taking turns round by round. Per variant and level: TTFT p50/p90
(to the first non-empty content or the first tool-call delta), per-stream output tokens/s (usage's completion
tokens - 1 over first to last output chunk), aggregate tokens/s (tokens over the batches' wall time), and the
CPU per output token of the gateway process and of its Triton with the model process (``/proc``, read before and
after each variant's batches). The machine is shared, so the CPU other processes take meanwhile is measured too
(``/proc/stat`` less this run's processes); a variant's round where it exceeds ``--redo-above`` cores is measured
again (at most ``--max-redos`` times per run), and the figures say how many were.

``--compare-ref REV`` checks REV out in a git worktree under /tmp, prepares its weights and launches its stack
beside this one (``PYTHONSAFEPATH=1 PYTHONPATH=<worktree>``); its ``plain`` variant takes its turn with the
others, so the old engine and the new one are measured in the same minutes, one stack generating at a time.

Then, with the stacks down, the grammar mask's cost per token is measured in-process (no Triton): µs per
``TokenSampler.sample()`` over random logits with the json_schema variant's and the tools variant's grammars
(the guides the gateway sends) against none, the draws either free or steered along this run's outputs.

    python -m perf.features --launch --rounds 3 --compare-ref 0e0582f
    python -m perf.features --gateway http://127.0.0.1:8080 [--ref-gateway http://127.0.0.1:9080]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import orjson

from gateway.config import REPO_ROOT
from perf.churn_sampler import descendants, listener_pid, process_table
from perf.metrics import percentile
from perf.sse import SSEParser
from perf.stack import Stack, launch_stack, process_cpu_seconds, ref_env, worktree

MODEL = "smollm2-135m-instruct"
TRITON_MODEL = "smollm2"
PROMPT = 'Name forty animals. Answer in JSON: {"items": [...]}'
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 20, "maxItems": 40}
    },
    "required": ["items"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "description": "Search the web",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    },
]
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"ignore_eos": True},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "animals", "schema": SCHEMA}}},
    "logprobs": {"ignore_eos": True, "logprobs": True, "top_logprobs": 5},
    "tools": {"tools": TOOLS, "tool_choice": "required"},
}
NEW, REF = "new", "ref"


def request_body(variant: str, model: str = MODEL, max_tokens: int = 128) -> dict[str, Any]:
    """The streamed, greedy chat request of one variant."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **VARIANTS[variant],
    }


class Scan(NamedTuple):
    output: bool  # non-empty content or a tool-call delta
    finish: str | None
    completion_tokens: int | None  # from the usage chunk
    prompt_tokens: int | None
    content: str
    calls: tuple[tuple[int, str, str], ...]  # tool-call deltas: (index, name or "", arguments fragment)


def scan(event: Mapping[str, Any]) -> Scan:
    """What one SSE chunk of a chat completion carries (logprobs alone are not output)."""
    finish, content, calls = None, [], []
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        content.append(delta.get("content") or "")
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            calls.append((int(call.get("index", 0)), function.get("name") or "", function.get("arguments") or ""))
        finish = choice.get("finish_reason") or finish
    usage = event.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    tokens, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
    text = "".join(content)
    return Scan(
        bool(text or calls),
        finish,
        tokens if isinstance(tokens, int) else None,
        prompt if isinstance(prompt, int) else None,
        text,
        tuple(calls),
    )


@dataclass(slots=True)
class Record:
    stack: str
    variant: str
    level: int
    start: float  # time.monotonic()
    first: float = 0.0  # first output chunk; 0: none
    last: float = 0.0  # last output chunk
    end: float = 0.0
    tokens: int = 0  # usage.completion_tokens
    prompt_tokens: int = 0
    chunks: int = 0  # chunks with output
    finish: str | None = None
    error: str | None = None
    content: list[str] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)  # index -> [name, arguments]

    @property
    def ok(self) -> bool:
        return self.error is None and self.first > 0 and self.tokens > 0

    @property
    def ttft(self) -> float:
        return self.first - self.start

    @property
    def tokens_per_s(self) -> float:
        """(tokens - 1) over first to last output chunk, as genai-perf counts per-request throughput."""
        span = self.last - self.first
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "variant": self.variant,
            "level": self.level,
            "ttft_ms": self.ttft * 1000 if self.first else None,
            "e2e_ms": (self.end - self.start) * 1000,
            "tokens_per_s": self.tokens_per_s,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "chunks": self.chunks,
            "finish": self.finish,
            "error": self.error,
            "content": "".join(self.content),
            "tool_calls": [tuple(c) for _, c in sorted(self.calls.items())],
        }

    def output_text(self) -> str:
        """What the model wrote: the content, or its tool calls in the CPU model's markup."""
        if self.calls:
            return tool_markup([(name, args) for _, (name, args) in sorted(self.calls.items())])
        return "".join(self.content)


async def stream_one(session: aiohttp.ClientSession, url: str, body: bytes, record: Record) -> Record:
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                text = await resp.text()
                record.error = f"http_{resp.status}: {text[:200]}"
            else:
                await _read(resp, record)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        record.error = type(exc).__name__
    record.end = time.monotonic()
    return record


async def _read(resp: aiohttp.ClientResponse, record: Record) -> None:
    parser = SSEParser()
    async for chunk in resp.content.iter_any():
        now = time.monotonic()
        for data in parser.feed(chunk):
            if data == b"[DONE]":
                return
            event = orjson.loads(data)
            if "error" in event:
                record.error = str(event["error"].get("code") or "stream_error")
                return
            s = scan(event)
            if s.output:
                if not record.first:
                    record.first = now
                record.last = now
                record.chunks += 1
                record.content.append(s.content)
                for index, name, args in s.calls:
                    call = record.calls.setdefault(index, ["", ""])
                    call[0] += name
                    call[1] += args
            record.finish = s.finish or record.finish
            if s.completion_tokens is not None:
                record.tokens = s.completion_tokens
            if s.prompt_tokens is not None:
                record.prompt_tokens = s.prompt_tokens


# CPU accounting


def _busy_ticks() -> tuple[int, int]:
    """Machine-wide (busy, steal) clock ticks from /proc/stat: busy is user + nice + system + irq + softirq."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6], fields[7] if len(fields) > 7 else 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass(slots=True)
class StackProcs:
    """One stack's processes: the gateway, and its Triton with every model process under it."""

    gateway: int
    engine: list[int] = field(default_factory=list)  # tritonserver and its model processes
    model: int = 0  # the Python-backend process of the measured model

    @classmethod
    def find(cls, gateway: int, triton_model: str = TRITON_MODEL) -> StackProcs:
        if not gateway:
            return cls(0)
        tree = [p for p in descendants(process_table(), gateway) if p != gateway]
        model = next((p for p in tree if f"/{triton_model}/1/model.py" in _cmdline(p)), 0)
        return cls(gateway, tree, model)

    def cpu(self) -> tuple[float, float]:
        """(gateway, Triton + models) CPU seconds so far."""
        return process_cpu_seconds(self.gateway), sum(process_cpu_seconds(p) for p in self.engine)


class Meter:
    """CPU over one stretch: the measured stack's, everything ours, and what the rest of the machine took."""

    def __init__(self, measured: StackProcs, every: Sequence[StackProcs]) -> None:
        self._measured = measured
        self._every = every
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _ours(self) -> float:
        return process_cpu_seconds(os.getpid()) + sum(sum(s.cpu()) for s in self._every)

    def __enter__(self) -> Meter:
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = _busy_ticks()
        self._ours0 = self._ours()
        self._gw0, self._engine0 = self._measured.cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        gw, engine = self._measured.cpu()
        busy, steal = _busy_ticks()
        self.wall = time.monotonic() - self._t0
        self.gateway_s = gw - self._gw0
        self.engine_s = engine - self._engine0
        self.other_s = max(0.0, (busy - self._busy0) / self._ticks - (self._ours() - self._ours0))
        self.steal_s = (steal - self._steal0) / self._ticks


# summaries


def _p(values: Sequence[float], q: float, scale: float = 1.0) -> float:
    return percentile(values, q) * scale if values else float("nan")


def summarize(records: Sequence[Record], window_s: float, gateway_s: float, engine_s: float) -> dict[str, Any]:
    """One stack, variant and level: latency, throughput and CPU per output token."""
    ok = [r for r in records if r.ok]
    tokens = sum(r.tokens for r in ok)
    per_token = (lambda s: s / tokens * 1e6) if tokens else (lambda s: float("nan"))
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(Counter(r.error for r in records if r.error)),
        "finish": dict(Counter(r.finish or "none" for r in ok)),
        "ttft_ms": {"p50": _p([r.ttft for r in ok], 50, 1000), "p90": _p([r.ttft for r in ok], 90, 1000)},
        "tokens_per_s_per_stream": {
            "p50": _p([r.tokens_per_s for r in ok], 50),
            "min": _p([r.tokens_per_s for r in ok], 0),
        },
        "tokens_per_request": {"p50": _p([r.tokens for r in ok], 50), "min": min((r.tokens for r in ok), default=0)},
        "prompt_tokens": max((r.prompt_tokens for r in ok), default=0),
        "output_tokens": tokens,
        "window_s": window_s,
        "aggregate_tokens_per_s": tokens / window_s if window_s > 0 else float("nan"),
        "gateway_cpu_us_per_token": per_token(gateway_s),
        "engine_cpu_us_per_token": per_token(engine_s),
    }


def compare(cells: Mapping[tuple[str, str, int], Mapping[str, Any]], variant: str = "plain") -> list[dict[str, Any]]:
    """New against ref, per level, for ``variant``: each figure and new/ref."""
    out = []
    for (stack, name, level), new in sorted(cells.items(), key=lambda kv: kv[0][2]):
        ref = cells.get((REF, variant, level))
        if stack != NEW or name != variant or ref is None:
            continue
        row: dict[str, Any] = {"level": level}
        for key, a, b in (
            ("ttft_p50_ms", new["ttft_ms"]["p50"], ref["ttft_ms"]["p50"]),
            ("tokens_per_s_per_stream", new["tokens_per_s_per_stream"]["p50"], ref["tokens_per_s_per_stream"]["p50"]),
            ("aggregate_tokens_per_s", new["aggregate_tokens_per_s"], ref["aggregate_tokens_per_s"]),
            ("gateway_cpu_us_per_token", new["gateway_cpu_us_per_token"], ref["gateway_cpu_us_per_token"]),
            ("engine_cpu_us_per_token", new["engine_cpu_us_per_token"], ref["engine_cpu_us_per_token"]),
        ):
            row[key] = {"new": a, "ref": b, "ratio": a / b if b else float("nan")}
        out.append(row)
    return out


def goals(comparison: Sequence[Mapping[str, Any]], ttft_limit_ms: float = 500.0) -> list[dict[str, Any]]:
    """The issue's goals for the new engine, from :func:`compare`'s rows (levels 1 and 4)."""
    by_level = {row["level"]: row for row in comparison}
    out = []
    one, four = by_level.get(1), by_level.get(4)
    if one is not None:
        tps, ttft = one["tokens_per_s_per_stream"]["ratio"], one["ttft_p50_ms"]["ratio"]
        out.append({"goal": "1 stream: tokens/s within 5% of ref", "value": f"x{tps:.3f}", "met": tps >= 0.95})
        out.append({"goal": "1 stream: TTFT p50 within 5% of ref", "value": f"x{ttft:.3f}", "met": ttft <= 1.05})
    if four is not None:
        ttft_ms, agg = four["ttft_p50_ms"]["new"], four["aggregate_tokens_per_s"]["ratio"]
        out.append(
            {
                "goal": f"4 streams: TTFT p50 <= {ttft_limit_ms:g} ms",
                "value": f"{ttft_ms:.0f} ms",
                "met": ttft_ms <= ttft_limit_ms,
            }
        )
        out.append({"goal": "4 streams: aggregate tokens/s >= 2x ref", "value": f"x{agg:.2f}", "met": agg >= 2.0})
    return out


# the grammar mask, in-process


def grammar_guides() -> dict[str, tuple[str, str]]:
    """The guides (type, text) the gateway sends the CPU model for the json_schema and tools variants."""
    from gateway.core.types import Tool, ToolChoice
    from gateway.text.guides import response_format_guide, tool_guide

    rf = response_format_guide(VARIANTS["json_schema"]["response_format"])
    tools = [Tool(t["function"]["name"], t["function"]["description"], t["function"]["parameters"]) for t in TOOLS]
    tg = tool_guide(tools, ToolChoice("required"), True, "generic", "llguidance")
    assert rf is not None and tg is not None
    return {"json_schema": (rf.type, rf.text), "tools": (tg.type, tg.text)}


def tool_markup(calls: Sequence[tuple[str, str]]) -> str:
    """Streamed tool calls (name, arguments JSON) as the CPU model writes them (``generic``: hermes markup)."""
    return "\n".join(
        f'<tool_call>\n{{"name":{json.dumps(name)},"arguments":{args}}}\n</tool_call>' for name, args in calls
    )


class _Walk:
    """One kind's sequence in :func:`grammar_cost`: a sampler, and a token path to steer along (or none)."""

    def __init__(self, make: Callable[[], Any], path: Sequence[int]) -> None:
        self._make = make
        self.path = path
        self.fresh: list[float] = []
        self.sequences = 0
        self.derailed = 0
        self.restart()

    def restart(self) -> None:
        t = time.perf_counter()
        self.sampler = self._make()
        self.fresh.append(time.perf_counter() - t)
        self.pos = 0


def grammar_cost(
    weights: Path, paths: Mapping[str, str] | None = None, samples: int = 3000, blocks: int = 10, seed: int = 0
) -> dict[str, Any]:
    """µs per ``TokenSampler.sample()`` (greedy, random logits) with each variant's grammar and with none.

    ``KIND/random``: the draws follow the random logits wherever the grammar lets them. ``KIND/steered``: the
    logits of the next token of ``paths[KIND]`` (an output of the model, as text) are raised above the rest, so
    the grammar walks the states a real output goes through. A sequence restarts (a fresh matcher, timed apart)
    when its grammar completes, it draws the end id, or its path is done or left. The kinds take turns in
    ``blocks`` blocks; the grammars are compiled once first (timed apart: the engine caches them per guide)."""
    from gateway.embedded.lm.grammar import GrammarCompiler
    from gateway.embedded.lm.sampling import SamplingSpec, TokenSampler
    from gateway.text.tokenizer import Tokenizer

    tokenizer = Tokenizer(weights)
    end_ids = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    t0 = time.perf_counter()
    compiler = GrammarCompiler(weights / "tokenizer.json", end_ids)
    tokenizer_ms = (time.perf_counter() - t0) * 1000
    vocab = compiler.vocab_size
    guides = grammar_guides()
    compile_ms = {}
    for name, (kind, text) in guides.items():
        t0 = time.perf_counter()
        compiler.matcher(kind, text)
        compile_ms[name] = (time.perf_counter() - t0) * 1000
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((64, vocab)) * 3).astype(np.float32)
    spec = SamplingSpec(temperature=0, end_ids=end_ids)

    def maker(guide: str | None) -> Callable[[], TokenSampler]:
        if guide is None:
            return lambda: TokenSampler(spec, vocab, [])
        return lambda: TokenSampler(spec, vocab, [], grammar=compiler.matcher(*guides[guide]))

    walks = {"none": _Walk(maker(None), [])}
    for name in guides:
        walks[f"{name}/random"] = _Walk(maker(name), [])
        if paths and paths.get(name):
            walks[f"{name}/steered"] = _Walk(maker(name), tokenizer.encode(paths[name]))
    times: dict[str, list[float]] = {k: [] for k in walks}
    per_block = max(1, samples // blocks)
    step = 0
    for _ in range(blocks):
        for kind, walk in walks.items():
            for _ in range(per_block):
                row = rows[step % len(rows)]
                step += 1
                target = walk.path[walk.pos] if walk.path else -1
                if target >= 0:
                    row = row.copy()
                    row[target] = 100.0
                t = time.perf_counter()
                token = walk.sampler.sample(row).token
                times[kind].append(time.perf_counter() - t)
                if kind == "none":
                    continue
                walk.pos += 1
                left = target >= 0 and token != target
                walk.derailed += left
                if walk.sampler.must_end or token in end_ids or left or (walk.path and walk.pos == len(walk.path)):
                    walk.sequences += 1
                    walk.restart()
    base = sum(times["none"]) / len(times["none"]) * 1e6
    out: dict[str, Any] = {"vocab": vocab, "samples": per_block * blocks, "tokenizer_ms": tokenizer_ms, "kinds": {}}
    for kind, walk in walks.items():
        mine = times[kind]
        entry: dict[str, Any] = {
            "us_mean": sum(mine) / len(mine) * 1e6,
            "us_p50": percentile(mine, 50) * 1e6,
            "us_p90": percentile(mine, 90) * 1e6,
            "us_p99": percentile(mine, 99) * 1e6,
        }
        if kind != "none":
            guide = kind.partition("/")[0]
            entry |= {
                "added_us_mean": entry["us_mean"] - base,
                "ratio_mean": entry["us_mean"] / base,
                "compile_ms": compile_ms[guide],
                "fresh_matcher_us": percentile(walk.fresh, 50) * 1e6,
                "sequences": walk.sequences,
                "path_tokens": len(walk.path),
                "derailed": walk.derailed,
            }
        out["kinds"][kind] = entry
    return out


# the stacks


def prepare_ref(tree: Path, env: Mapping[str, str]) -> None:
    _log(f"preparing the weights of {tree} (python -m gateway prepare-model)")
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "prepare-model"],
        cwd=tree,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"prepare-model in {tree} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    _log(f"prepared in {time.monotonic() - t0:.1f} s")


def _pid_of(url: str, given: int) -> int:
    if given:
        return given
    port = urlsplit(url).port
    return (listener_pid(port) or 0) if port else 0


def _log(message: str) -> None:
    print(f"[features] {message}", file=sys.stderr, flush=True)


# the run


async def _batch(
    session: aiohttp.ClientSession, url: str, stack: str, variant: str, level: int, body: bytes
) -> tuple[list[Record], float]:
    start = time.monotonic()
    records = [Record(stack, variant, level, start) for _ in range(level)]
    await asyncio.gather(*(stream_one(session, url + "/v1/chat/completions", body, r) for r in records))
    return records, max(r.end for r in records) - start


async def measure(args: argparse.Namespace, urls: Mapping[str, str], procs: Mapping[str, StackProcs]) -> dict[str, Any]:
    targets = [(NEW, v) for v in args.variants] + ([(REF, "plain")] if REF in urls else [])
    bodies = {v: orjson.dumps(request_body(v, args.model, args.max_tokens)) for v in args.variants}
    levels = [int(x) for x in args.concurrency.split(",")]
    every = list(procs.values())
    cells: dict[tuple[str, str, int], dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    rounds_log: list[dict[str, Any]] = []
    outputs: dict[str, str] = {}  # stack:variant -> the first output (greedy: they are all the same at 1 stream)
    redos = 0
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        for level in levels:
            for stack, variant in targets:  # warm-up, not counted
                for _ in range(args.warmup):
                    records, _ = await _batch(session, urls[stack], stack, variant, level, bodies[variant])
                    bad = [r.error for r in records if not r.ok]
                    if bad:
                        raise SystemExit(f"{stack} {variant} failed in warm-up: {bad[0]}")
            acc: dict[tuple[str, str], dict[str, Any]] = {
                t: {"records": [], "window": 0.0, "gateway": 0.0, "engine": 0.0} for t in targets
            }
            for rnd in range(args.rounds):
                for stack, variant in targets:
                    a = acc[(stack, variant)]
                    while True:
                        records = []
                        window = 0.0
                        with Meter(procs[stack], every) as meter:
                            for _ in range(args.batches):
                                batch, took = await _batch(session, urls[stack], stack, variant, level, bodies[variant])
                                records.extend(batch)
                                window += took
                        other = meter.other_s / meter.wall
                        redo = other > args.redo_above and redos < args.max_redos
                        rounds_log.append(
                            {
                                "level": level,
                                "round": rnd + 1,
                                "stack": stack,
                                "variant": variant,
                                "wall_s": meter.wall,
                                "other_cores": other,
                                "steal_cores": meter.steal_s / meter.wall,
                                "load1": os.getloadavg()[0],
                                "discarded": redo,
                            }
                        )
                        ok = [r for r in records if r.ok]
                        _log(
                            f"streams {level} round {rnd + 1}/{args.rounds} {stack}:{variant:<12} "
                            f"{len(ok)}/{len(records)} ok, tokens {[r.tokens for r in records]}, "
                            f"TTFT {[round(r.ttft * 1000) for r in ok]} ms, other processes {other:.2f} cores"
                            + (" > --redo-above: measured again" if redo else "")
                        )
                        if not redo:
                            break
                        redos += 1
                    a["records"].extend(records)
                    a["window"] += window
                    a["gateway"] += meter.gateway_s
                    a["engine"] += meter.engine_s
            for (stack, variant), a in acc.items():
                cells[(stack, variant, level)] = summarize(a["records"], a["window"], a["gateway"], a["engine"])
                rows.extend(r.row() for r in a["records"])
                ok = [r for r in a["records"] if r.ok]
                if ok:
                    outputs.setdefault(f"{stack}:{variant}", ok[0].output_text())
    return {"cells": cells, "rows": rows, "rounds": rounds_log, "outputs": outputs}


def print_report(
    cells: Mapping[tuple[str, str, int], Mapping[str, Any]],
    comparison: Sequence[Mapping[str, Any]],
    goal_rows: Sequence[Mapping[str, Any]],
    grammar: Mapping[str, Any] | None,
) -> None:
    print(
        "\n| streams | stack | variant | TTFT p50 | TTFT p90 | tok/s per stream p50 | aggregate tok/s "
        "| prompt → output tokens | gateway CPU µs/token | Triton + model CPU µs/token | ok |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (stack, variant, level), c in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        print(
            f"| {level} | {stack} | {variant} | {c['ttft_ms']['p50']:.0f} ms | {c['ttft_ms']['p90']:.0f} ms "
            f"| {c['tokens_per_s_per_stream']['p50']:.1f} | {c['aggregate_tokens_per_s']:.1f} "
            f"| {c['prompt_tokens']} → {c['tokens_per_request']['p50']:.0f} | {c['gateway_cpu_us_per_token']:.0f} "
            f"| {c['engine_cpu_us_per_token']:.0f} | {c['ok']}/{c['requests']} |"
        )
    if comparison:
        print(
            "\n| streams | TTFT p50, ref → new | tok/s per stream, ref → new | aggregate tok/s, ref → new "
            "| gateway CPU µs/token, ref → new | Triton + model CPU µs/token, ref → new |"
        )
        print("|---|---|---|---|---|---|")
        for row in comparison:
            cols = []
            for key, fmt in (
                ("ttft_p50_ms", ".0f"),
                ("tokens_per_s_per_stream", ".1f"),
                ("aggregate_tokens_per_s", ".1f"),
                ("gateway_cpu_us_per_token", ".0f"),
                ("engine_cpu_us_per_token", ".0f"),
            ):
                v = row[key]
                cols.append(f"{v['ref']:{fmt}} → {v['new']:{fmt}} (×{v['ratio']:.2f})")
            print(f"| {row['level']} | " + " | ".join(cols) + " |")
    if goal_rows:
        print("\n| goal | measured | met |\n|---|---|---|")
        for g in goal_rows:
            print(f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else 'no'} |")
    if grammar:
        base = grammar["kinds"]["none"]
        print(
            f"\ngrammar mask, in-process ({grammar['samples']} greedy samples per kind over random logits, "
            f"vocabulary {grammar['vocab']}; steered: along this run's output):"
        )
        print(
            "| grammar | µs per sample() mean | p50 | p99 | added per token (mean) | sequences (derailed) "
            "| compile | fresh matcher |"
        )
        print("|---|---|---|---|---|---|---|---|")
        print(f"| none | {base['us_mean']:.0f} | {base['us_p50']:.0f} | {base['us_p99']:.0f} | – | – | – | – |")
        for kind, k in grammar["kinds"].items():
            if kind != "none":
                print(
                    f"| {kind} | {k['us_mean']:.0f} | {k['us_p50']:.0f} | {k['us_p99']:.0f} "
                    f"| +{k['added_us_mean']:.0f} µs (×{k['ratio_mean']:.2f}) | {k['sequences']} ({k['derailed']}) "
                    f"| {k['compile_ms']:.1f} ms | {k['fresh_matcher_us']:.0f} µs |"
                )


def plot(cells: Mapping[tuple[str, str, int], Mapping[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({(s, v) for s, v, _ in cells}, key=lambda t: (t[0] != NEW, list(VARIANTS).index(t[1])))
    levels = sorted({lv for _, _, lv in cells})
    panels: tuple[tuple[str, Callable[[Mapping[str, Any]], float]], ...] = (
        ("TTFT p50 (ms)", lambda c: c["ttft_ms"]["p50"]),
        ("output tokens/s per stream (p50)", lambda c: c["tokens_per_s_per_stream"]["p50"]),
        ("aggregate output tokens/s", lambda c: c["aggregate_tokens_per_s"]),
        ("gateway CPU µs per output token", lambda c: c["gateway_cpu_us_per_token"]),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    width = 0.8 / max(1, len(levels))
    xs = np.arange(len(targets))
    for ax, (title, value) in zip(axes.flat, panels, strict=True):
        for i, level in enumerate(levels):
            ys = [value(cells[(s, v, level)]) if (s, v, level) in cells else np.nan for s, v in targets]
            ax.bar(xs + i * width, ys, width, label=f"{level} stream{'s' if level > 1 else ''}")
        ax.set_xticks(xs + width * (len(levels) - 1) / 2, [f"{s}:{v}" for s, v in targets], rotation=15)
        ax.set(title=title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launch", action="store_true", help="start `python -m gateway serve` on free ports")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--gateway-pid", type=int, default=0, help="default: the process listening on its port")
    parser.add_argument("--compare-ref", metavar="GITREV", default="", help="launch REV's stack too, from a worktree")
    parser.add_argument("--ref-worktree", type=Path, default=Path("/tmp/features-ref"))
    parser.add_argument("--ref-gateway", default="", help="an already running reference stack instead")
    parser.add_argument("--ref-gateway-pid", type=int, default=0)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--triton-model", default=TRITON_MODEL)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--concurrency", default="1,4", help="requests fired together")
    parser.add_argument("--rounds", type=int, default=3, help="turns each variant takes per level, interleaved")
    parser.add_argument("--batches", type=int, default=2, help="batches per variant, level and round")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted batches per variant and level")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--redo-above",
        type=float,
        default=0.3,
        metavar="CORES",
        help="measure a variant's round again when other processes took more CPU than this meanwhile",
    )
    parser.add_argument("--max-redos", type=int, default=6, help="at most this many rounds measured again per run")
    parser.add_argument("--request-timeout", type=float, default=180.0)
    parser.add_argument("--grammar-samples", type=int, default=3000, help="0: skip the in-process grammar cost")
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "model_repository" / "smollm2" / "weights")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; expected some of {', '.join(VARIANTS)}")
    if args.compare_ref and args.ref_gateway:
        parser.error("--compare-ref and --ref-gateway exclude each other")
    if (args.compare_ref or args.ref_gateway) and "plain" not in args.variants:
        parser.error("the comparison with ref needs the plain variant")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    started = time.monotonic()
    machine: dict[str, Any] = {"cores": os.cpu_count(), "load_at_start": os.getloadavg()}

    with contextlib.ExitStack() as cleanup:
        urls, procs = _stacks(args, stamp, cleanup)
        _log(f"stacks up after {time.monotonic() - started:.0f} s: " + ", ".join(f"{k} {u}" for k, u in urls.items()))
        result = asyncio.run(measure(args, urls, procs))
    grammar = None
    if args.grammar_samples:  # with the stacks down, along the outputs of this run
        _log(f"grammar mask cost, {args.grammar_samples} samples per kind")
        paths = {
            v: result["outputs"][f"{NEW}:{v}"] for v in ("json_schema", "tools") if f"{NEW}:{v}" in result["outputs"]
        }
        grammar = grammar_cost(args.weights, paths, args.grammar_samples)
        for kind, k in grammar["kinds"].items():
            _log(f"  {kind:<20} {k['us_mean']:7.0f} µs per sample() (p50 {k['us_p50']:.0f})")
    cells = result["cells"]
    comparison = compare(cells)
    goal_rows = goals(comparison)
    machine["load_at_end"] = os.getloadavg()
    others = [r["other_cores"] for r in result["rounds"] if not r["discarded"]]
    machine["other_cores"] = {"mean": sum(others) / len(others), "max": max(others)} if others else {}
    machine["rounds_measured_again"] = sum(r["discarded"] for r in result["rounds"])
    machine["wall_s"] = time.monotonic() - started

    base = args.out / f"features_{stamp}"
    config = {k: str(v) for k, v in vars(args).items()}
    payload = {
        "config": config,
        "machine": machine,
        "request_bodies": {v: request_body(v, args.model, args.max_tokens) for v in args.variants},
        "cells": [{"stack": s, "variant": v, "level": lv, **c} for (s, v, lv), c in cells.items()],
        "comparison": comparison,
        "goals": goal_rows,
        "grammar_mask": grammar,
        "outputs": result["outputs"],
        "rounds": result["rounds"],
        "requests": result["rows"],
    }
    Path(f"{base}.json").write_text(json.dumps(payload, indent=2, default=str))
    plot(cells, Path(f"{base}.png"))
    print_report(cells, comparison, goal_rows, grammar)
    print(
        f"\nload average {machine['load_at_start'][0]:.2f} at start, {machine['load_at_end'][0]:.2f} at end; "
        f"other processes took {machine['other_cores'].get('mean', 0):.2f} cores on average "
        f"(max {machine['other_cores'].get('max', 0):.2f}) in the rounds kept, "
        f"{machine['rounds_measured_again']} rounds measured again; {machine['wall_s']:.0f} s in all"
    )
    print(f"wrote {base}.json and {base}.png")
    return 0


def _stacks(
    args: argparse.Namespace, stamp: str, cleanup: contextlib.ExitStack
) -> tuple[dict[str, str], dict[str, StackProcs]]:
    """Launch or find the stacks; everything launched is stopped (and the worktree removed) by ``cleanup``."""
    urls: dict[str, str] = {}
    procs: dict[str, StackProcs] = {}
    stacks: list[Stack] = []

    def stop_all() -> None:
        for stack in reversed(stacks):
            stack.stop()

    if args.compare_ref:  # the worktree goes last, after its stack has stopped
        tree = cleanup.enter_context(worktree(args.compare_ref, args.ref_worktree))
        cache = Path(tempfile.mkdtemp(prefix="features-ref-cache-"))
        cleanup.callback(shutil.rmtree, cache, True)
        env = ref_env(tree, cache)
        prepare_ref(tree, env)
    cleanup.callback(stop_all)
    if args.launch:
        cache = Path(tempfile.mkdtemp(prefix="features-cache-"))
        cleanup.callback(shutil.rmtree, cache, True)
        stack = launch_stack(log=args.out / f"features_{stamp}_new.log", env={"GATEWAY_CACHE_DIR": str(cache)})
        stacks.append(stack)
        args.gateway, args.gateway_pid = stack.gateway, stack.pid
    urls[NEW] = args.gateway
    procs[NEW] = StackProcs.find(_pid_of(args.gateway, args.gateway_pid), args.triton_model)
    if args.compare_ref:
        stack = launch_stack(log=args.out / f"features_{stamp}_ref.log", env=env)
        stacks.append(stack)
        args.ref_gateway, args.ref_gateway_pid = stack.gateway, stack.pid
    if args.ref_gateway:
        urls[REF] = args.ref_gateway
        procs[REF] = StackProcs.find(_pid_of(args.ref_gateway, args.ref_gateway_pid), args.triton_model)
    for name, p in procs.items():
        if not p.gateway:
            _log(f"{name}: no gateway pid, so no CPU figures")
        elif not p.model:
            _log(f"{name}: no {args.triton_model} model process under gateway {p.gateway}; Triton CPU not per model")
    return urls, procs


if __name__ == "__main__":
    sys.exit(main())
