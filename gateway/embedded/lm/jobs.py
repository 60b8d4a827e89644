"""The decoding loop's data types (:mod:`gateway.embedded.lm.scheduler`): its jobs and what they report.

A :class:`Job` is one sequence to generate. It reports through its :class:`Sink`: tokens in
:class:`Chunk` objects, then one :class:`End` with the :class:`Reason` the sequence ended. The adapter
(model_repository/smollm2/1/model.py) builds jobs from requests and turns chunks into responses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from gateway.embedded.lm.sampling import SamplingSpec


class Chunk(NamedTuple):
    """Tokens for the client: one when streaming, every token at the end otherwise."""

    tokens: list[int]
    logprobs: list[float] | None  # of these tokens (want_logprobs)
    cum_logprob: float | None  # the sequence's running total through these tokens (want_logprobs)
    logits: NDArray[np.float32] | None  # [len(tokens), vocab] processed logits (want_logits)


class Reason(enum.Enum):
    END = "end"  # an end id (not emitted), or a complete grammar
    LENGTH = "length"  # max_new_tokens, or the context is full
    STOP_WORDS = "stop words"  # a stop-words sequence (emitted)
    STOPPED = "stop request"  # Scheduler.stop
    CANCELLED = "call cancelled"  # the sink reported the call cancelled
    ERROR = "error"


class End(NamedTuple):
    reason: Reason
    tokens: int  # generated (the end id not counted)
    error: str | None = None  # the message, for Reason.ERROR


class Sink(Protocol):
    """Where a sequence's output goes; every call comes from the loop thread."""

    def emit(self, chunk: Chunk) -> None: ...

    def finish(self, end: End) -> None: ...

    def cancelled(self) -> bool: ...


@dataclass(slots=True, eq=False)
class Job:
    """One sequence to generate. End ids are ``sampling.end_ids``; ``guide`` is (guide type, guide)."""

    request_id: str
    prompt: list[int]
    max_new_tokens: int
    sink: Sink
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    streaming: bool = True
    stop_words: tuple[tuple[int, ...], ...] = ()
    guide: tuple[str, str] | None = None
    want_logprobs: bool = False
    want_logits: bool = False
