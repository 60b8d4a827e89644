"""A transcription request, REST and gRPC alike: :func:`transcribing` checks the options, takes the
caller's limits, decodes the recording and sets its run up against the job's model (one unary
Triton call per window, each in an upstream slot of its own), in that order, so a refused request
costs no decoding; then it counts the audio heard and settles the job however the run ended.
:mod:`gateway.core.transcribe` walks the windows."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.audio.decode import decode_audio_async
from gateway.audio.transcript import normalize_language
from gateway.auth.keys import Principal
from gateway.core.job import Job, counted
from gateway.core.transcribe import Infer, TranscribeOptions, TranscriptionRun, transcribe
from gateway.errors import InvalidRequest
from gateway.limits.ratelimit import RateLimiter
from gateway.observability.metrics import AUDIO_SECONDS

TRANSCRIBE = ("transcribe",)
TEMPERATURE_RANGE = (0.0, 1.0)
_OUTPUT = ("TRANSCRIPTS",)


def checked_options(options: TranscribeOptions) -> TranscribeOptions:
    """``options`` with the language as Whisper's code; raises :class:`InvalidRequest` for a language
    Whisper does not know (``param="language"``) or a temperature out of range."""
    low, high = TEMPERATURE_RANGE
    if options.temperature is not None and not low <= options.temperature <= high:
        raise InvalidRequest(
            f"Invalid value for 'temperature': must be between {low:g} and {high:g}", param="temperature"
        )
    return dataclasses.replace(options, language=normalize_language(options.language))


@asynccontextmanager
async def transcribing(
    job: Job,
    principal: Principal,
    limiter: RateLimiter | None,
    audio: bytes,
    filename: str | None,
    options: TranscribeOptions,
    *,
    max_seconds: float,
) -> AsyncIterator[TranscriptionRun]:
    """The run of ``audio`` (a whole file; ``filename`` names it in errors), to consume inside this.

    In order: the options are checked, the caller's limits taken (no tokens reserved), the file
    decoded off the event loop (a bad or too long one is ``param="file"``); at the end, however it
    ends (a failed decode included), the seconds the model heard are counted and the job settled.
    """
    options = checked_options(options)
    if limiter is not None:
        job.grant = await limiter.acquire(principal, job.model.id, 0)
    job.dispatched()
    try:
        samples = await decode_audio_async(audio, filename, max_seconds=max_seconds)
        run = transcribe(window_infer(job), samples, options)
        try:
            yield run
        finally:
            AUDIO_SECONDS.labels(job.model.id, job.project).inc(run.heard)
    finally:
        await job.settle()


def window_infer(job: Job) -> Infer:
    """One window's call to the job's model, each with its own request id (the job's, numbered), in an
    admission slot of the model held until Triton has answered (even when the client has gone)."""
    model = job.model
    timeout_s = model.config.infer_timeout
    counter = iter(range(1 << 30))

    async def infer(tensors: dict[str, NDArray[Any]]) -> Mapping[str, NDArray[np.generic]]:
        slot = model.admission.slot(job.stats)
        call = model.upstreams.infer(f"{job.request_id}-{next(counter)}", tensors, _OUTPUT, timeout_s, slot)
        return await counted(model.id, call)

    return infer
