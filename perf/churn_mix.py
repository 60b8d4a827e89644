"""The churn benchmark's request mix: the kinds of request, their weights (``--mix``), the weighted
pick, and the chat completion body of each kind."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Any

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
    shape: str = ""  # more fields of the body, from SHAPES: structured outputs, tools, logprobs


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
        Kind("real_json", REAL, True, 48, expect=("stop", "length"), shape="json_schema"),
        Kind("real_tools", REAL, False, 48, expect=("tool_calls", "length"), shape="tools"),
        Kind("real_tools_stream", REAL, True, 48, expect=("tool_calls", "length"), shape="tools"),
        Kind("real_logprobs", REAL, True, 8, expect=("stop", "length"), shape="logprobs"),
        Kind("real_json_disconnect", REAL, True, 48, disconnect=True, shape="json_schema"),
    )
}

_CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"]}
SHAPES: dict[str, dict[str, Any]] = {
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": _CITY}}},
    "tools": {
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": _CITY}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,  # one call: a small model asked for several repeats it to the length cut
    },
    "logprobs": {"logprobs": True, "top_logprobs": 3},
}

DEFAULT_MIX = (
    "one_token=20,long_stream=12,stop=15,n2=8,n2_nonstream=4,nonstream=15,disconnect=15,"
    "real_stream=2,real_nonstream=1,real_disconnect=1,real_json=1,real_tools=1,real_tools_stream=1,"
    "real_logprobs=1,real_json_disconnect=1"
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
    body.update(SHAPES.get(kind.shape, {}))
    return body
