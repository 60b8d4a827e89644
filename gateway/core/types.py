"""Internal types: what the gateway works on between the wire (REST, gRPC) and Triton."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gateway.core.halt import Halt


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"


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


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One sequence to generate: one choice of one prompt."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    first_token_timeout: float = 60.0  # seconds the upstream may take to its first response
    idle_timeout: float = 30.0  # seconds it may then go silent between two responses
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


@dataclass(slots=True)
class Delta:
    """A piece of one choice's output, as the transports see it."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0  # the choice's running count of generated tokens


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
