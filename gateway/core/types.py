"""Internal types: what the gateway works on between the wire (REST, gRPC) and Triton."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from gateway.core.halt import Halt


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: its name, what it does, its parameters' JSON Schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """How the model may use the tools: ``named`` forces the call of ``name``."""

    mode: Literal["none", "auto", "required", "named"] = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Guide:
    """A constraint on the output, as TensorRT-LLM's guided decoding takes it.

    ``type`` is one of ``json`` (any JSON object), ``json_schema``, ``regex``, ``ebnf_grammar``;
    ``prefill`` is text the gateway appends to the prompt before the constrained part (e.g. a tool
    call's opening markup), so the model continues from it.
    """

    type: str
    text: str = ""
    prefill: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of one tool call of a choice, as OpenAI streams it.

    The first piece of call ``index`` carries its ``id`` and ``name``; the later ones carry
    fragments of ``arguments`` that concatenate to the call's JSON arguments.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What one generation asks of the model, already validated against the model's limits."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k limit
    seed: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    # token sequences the model itself stops on (TensorRT-LLM's stop_words_list); each decodes to
    # text that contains one of ``stop``, so the text-level match always comes at or before it
    stop_ids: tuple[tuple[int, ...], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias): TensorRT-LLM's embedding_bias
    stop_token_ids: tuple[int, ...] = ()  # more end tokens: the choice ends on one, which is not text
    logprobs: bool = False  # each token's logprob (the model's output_log_probs)
    top_logprobs: int = 0  # and the k most likely tokens at each step (from the model's generation_logits)
    guide: Guide | None = None  # guided decoding: the output is held to a schema or grammar

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True, slots=True)
class SamplingInput:
    """Sampling fields as a client sent them (None: not given), before the model's checks."""

    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # the name to report in errors
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    logprobs_param: str = "logprobs"  # the name to report in errors (chat: top_logprobs)


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One sequence to generate: one choice of one prompt."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    first_token_timeout: float = 60.0  # seconds the upstream may take to its first response
    idle_timeout: float = 30.0  # seconds it may then go silent between two responses
    vocab_size: int = 0  # the model's vocabulary (the length of a logit_bias vector)
    halt: Halt = field(default_factory=Halt, compare=False)  # the request's stop signal (client gone)


@dataclass(slots=True)
class RequestStats:
    """Timings and counts of one request, for metrics and the access log (monotonic seconds)."""

    started: float  # the request arrived
    dispatched: float = 0.0  # planning done: the upstream requests are about to be sent
    first_token: float = 0.0  # the first text of any choice
    queue_wait: float = 0.0  # seconds waiting for an upstream slot (admission)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch: bool = False  # a batch line: admitted behind interactive requests (gateway.limits.admission)
    upstream: str = ""  # the upstream that served it (the last tried): the x-upstream header, the access log


class TokenLogprob(NamedTuple):
    """One generated token's logprob, and the most likely tokens at its step (best first)."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(slots=True)
class Tokens:
    """One upstream response of one sequence: its new token ids, with their logprobs when asked."""

    ids: list[int]
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class Delta:
    """A piece of one choice's output, as the transports see it."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0  # the choice's running count of generated tokens
    logprobs: list[TokenLogprob] | None = None  # the tokens since the last delta, when asked
    tool_calls: list[ToolCallDelta] | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One whole tool call of a choice."""

    id: str
    name: str
    arguments: str  # JSON text


@dataclass(slots=True)
class ChoiceOutput:
    """The whole output of one choice, gathered from its deltas (non-streaming responses)."""

    parts: list[str] = field(default_factory=list)
    finish_reason: FinishReason = FinishReason.STOP
    logprobs: list[TokenLogprob] | None = None
    _calls: list[list[str]] = field(default_factory=list)  # per call: id, name, then argument pieces

    def add(self, delta: Delta) -> None:
        self.parts.append(delta.text)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        if delta.logprobs:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(delta.logprobs)
        for piece in delta.tool_calls or ():
            while len(self._calls) <= piece.index:
                self._calls.append(["", ""])
            call = self._calls[piece.index]
            if piece.id:
                call[0] = piece.id
            if piece.name:
                call[1] = piece.name
            call.append(piece.arguments)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(c[0], c[1], "".join(c[2:])) for c in self._calls]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class Choice:
    """One prompt/choice pair of a request: its index in the response, its prompt, its seed."""

    index: int
    prompt_ids: list[int]
    seed: int | None = None
