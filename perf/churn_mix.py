"""The churn benchmark's request mix: the kinds of request, their weights (``--mix``), the weighted
pick, the body of each chat and Responses kind, and the bodies of the other APIs' kinds (embeddings,
rerank, transcriptions), drawn afresh for each request."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Any

SYNTHETIC = "synthetic"
REAL = "real"
EMBEDDING = "embedding"  # the embedding model (--embed-model)
TRANSCRIPTION = "transcription"  # the speech-to-text model (--transcribe-model)

# the API a kind speaks, and its path
CHAT, RESPONSES, EMBEDDINGS, RERANK, TRANSCRIPTIONS = "chat", "responses", "embeddings", "rerank", "transcriptions"
PATHS = {
    CHAT: "/v1/chat/completions",
    RESPONSES: "/v1/responses",
    EMBEDDINGS: "/v1/embeddings",
    RERANK: "/v1/rerank",
    TRANSCRIPTIONS: "/v1/audio/transcriptions",
}
GENERATE = (CHAT, RESPONSES)  # the generate path's APIs: one body per kind, built once, streamed or not
EMBED_DIM = 384  # all-MiniLM-L6-v2's vectors


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of request in the mix."""

    name: str
    model: str  # SYNTHETIC, REAL, EMBEDDING or TRANSCRIPTION: resolved to a model id from the command line
    stream: bool
    max_tokens: int
    n: int = 1
    stop: tuple[str, ...] = ()
    # chat, responses: the client closes the connection after 1-3 SSE events; other APIs: right after sending
    disconnect: bool = False
    # finish reasons this kind may end with (responses: incomplete, completed or function_call); empty: any
    expect: tuple[str, ...] = ()
    real_tokens: bool = False  # max_tokens comes from --real-max-tokens
    shape: str = ""  # more fields of the body, from SHAPES: structured outputs, tools, logprobs
    api: str = CHAT  # a key of PATHS
    inputs: tuple[int, int] = (0, 0)  # embeddings: texts per request; rerank: documents (a range, both included)
    status: int = 200  # the HTTP status this kind must get (400: an invalid request, rejected as it must be)


# The synthetic model's text cycles through " the quick brown fox jumps over the lazy dog ." and every
# stream is exactly max_tokens long, so its finish reasons are known in advance (a response: incomplete).
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
        Kind("responses", SYNTHETIC, False, 32, expect=("incomplete",), api=RESPONSES),
        Kind("responses_stream", SYNTHETIC, True, 64, expect=("incomplete",), api=RESPONSES),
        Kind("responses_disconnect", SYNTHETIC, True, 256, disconnect=True, api=RESPONSES),
        Kind(
            "real_responses_tools",
            REAL,
            False,
            48,
            expect=("function_call", "incomplete"),
            shape="tools",
            api=RESPONSES,
        ),
        Kind("embed", EMBEDDING, False, 0, api=EMBEDDINGS, inputs=(1, 64)),
        Kind("embed_big", EMBEDDING, False, 0, api=EMBEDDINGS, inputs=(300, 300)),  # two Triton batches
        Kind("rerank", EMBEDDING, False, 0, api=RERANK, inputs=(5, 20)),
        Kind("embed_disconnect", EMBEDDING, False, 0, api=EMBEDDINGS, inputs=(256, 256), disconnect=True),
        Kind("embed_bad", EMBEDDING, False, 0, api=EMBEDDINGS, status=400),
        Kind("transcribe", TRANSCRIPTION, False, 0, api=TRANSCRIPTIONS),
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
# the Responses API's shapes: its function tools are flat ({"type": "function", "name", "parameters"})
RESPONSES_SHAPES: dict[str, dict[str, Any]] = {
    "tools": {
        **SHAPES["tools"],
        "tools": [{"type": "function", **tool["function"]} for tool in SHAPES["tools"]["tools"]],
    },
}

DEFAULT_MIX = (
    "one_token=20,long_stream=12,stop=15,n2=8,n2_nonstream=4,nonstream=15,disconnect=15,"
    "real_stream=2,real_nonstream=1,real_disconnect=1,real_json=1,real_tools=1,real_tools_stream=1,"
    "real_logprobs=1,real_json_disconnect=1,"
    "responses=3,responses_stream=4,responses_disconnect=2,real_responses_tools=0.5,"
    "embed=1.5,embed_big=0.1,rerank=1,embed_disconnect=0.2,embed_bad=1,transcribe=0.2"
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
    """The body of one request of a chat or Responses kind: a chat completion, or a response."""
    max_tokens = real_max_tokens if kind.real_tokens else kind.max_tokens
    prompt = PROMPTS[kind.model]
    if kind.api == RESPONSES:
        return {
            "model": model_id,
            "input": prompt,
            "max_output_tokens": max_tokens,
            "temperature": 0,
            "stream": kind.stream,
            **RESPONSES_SHAPES.get(kind.shape, {}),
        }
    body: dict[str, Any] = {
        "model": model_id,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
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


# --- the other APIs' bodies (embeddings, rerank), drawn for each request ---

_PROSE = (
    "the river runs past an old mill where children play after school while their parents work in the "
    "fields and the baker sells warm bread to travellers who stop on their way to the coast a storm came "
    "early this year so the harvest was small but the village still held its summer fair with music games "
    "and a long table of food under the chestnut trees near the church"
)
_WORDS = tuple(_PROSE.split())

# Invalid embeddings requests: each must get a 400 with an OpenAI error body (the model is added).
BAD_EMBEDDINGS: tuple[dict[str, Any], ...] = (
    {"input": ""},  # an empty string
    {"input": []},  # no input
    {"input": ["a fine text", ""]},  # one empty string among others
    {"input": [[]]},  # an empty list of token ids
    {"input": [[101, -5, 102]]},  # a negative token id
    {"input": "word " * 300},  # longer than the model's context (256 tokens)
    {"input": "hello", "encoding_format": "int8"},  # not float or base64
    {"encoding_format": "float"},  # no input at all
)


def text(rng: random.Random, low: int = 3, high: int = 30) -> str:
    """A short English-like sentence of ``low`` to ``high`` words."""
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def api_body(kind: Kind, model_id: str, rng: random.Random) -> dict[str, Any]:
    """The JSON body of one request of an embeddings or rerank kind (not chat, not transcriptions)."""
    if kind.api == EMBEDDINGS and kind.status == 400:
        return {"model": model_id, **rng.choice(BAD_EMBEDDINGS)}
    count = rng.randint(*kind.inputs)
    if kind.api == EMBEDDINGS:
        if kind.inputs[0] == 1 and rng.random() < 0.1:  # OpenAI's other form: one text, not a list
            return {"model": model_id, "input": text(rng)}
        return {"model": model_id, "input": [text(rng) for _ in range(count)]}
    if kind.api == RERANK:
        body: dict[str, Any] = {
            "model": model_id,
            "query": text(rng, 3, 10),
            "documents": [text(rng) for _ in range(count)],
        }
        if rng.random() < 0.5:
            body["top_n"] = rng.randint(1, count + 2)  # top_n past the documents: all of them
        if rng.random() < 0.3:
            body["return_documents"] = False
        return body
    raise ValueError(f"{kind.name}: no JSON body for the {kind.api} API")
