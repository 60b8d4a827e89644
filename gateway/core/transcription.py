"""A transcription request, REST and gRPC alike: the recording decoded and its run set up against
the job's model (one unary Triton call per window), and the caller's limits, an upstream slot and
the accounting held around the run. :mod:`gateway.core.transcribe` walks the windows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.audio.decode import decode_audio_async
from gateway.auth.keys import Principal
from gateway.core.encode import EncodeJob
from gateway.core.transcribe import Infer, TranscribeOptions, TranscriptionRun, transcribe
from gateway.errors import InvalidRequest
from gateway.limits.ratelimit import RateLimiter
from gateway.observability.metrics import AUDIO_SECONDS

TRANSCRIBE = ("transcribe",)
TEMPERATURE_RANGE = (0.0, 1.0)
_OUTPUT = ("TRANSCRIPTS",)


def checked_temperature(temperature: float) -> float:
    """A request's sampling temperature, in OpenAI's range for transcriptions (0 to 1)."""
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        raise InvalidRequest(
            f"Invalid value for 'temperature': must be between {low:g} and {high:g}", param="temperature"
        )
    return temperature


async def start_run(
    job: EncodeJob, audio: bytes, filename: str | None, options: TranscribeOptions, max_seconds: float
) -> TranscriptionRun:
    """The recording decoded (off the event loop) and its run ready to go; a bad file (``param="file"``)
    or an unknown language fails here, before any limit is taken or any window is sent."""
    samples = await decode_audio_async(audio, filename, max_seconds=max_seconds)
    return transcribe(window_infer(job), samples, options)


def window_infer(job: EncodeJob) -> Infer:
    """One window's call to the job's model, each with its own request id (the job's, numbered)."""
    deadline = job.model.config.first_token_timeout
    counter = iter(range(1 << 30))

    async def infer(tensors: dict[str, NDArray[Any]]) -> Mapping[str, NDArray[np.generic]]:
        return await job.model.upstreams.infer(f"{job.request_id}-{next(counter)}", tensors, _OUTPUT, deadline)

    return infer


@asynccontextmanager
async def admitted(
    job: EncodeJob, principal: Principal, limiter: RateLimiter | None, run: TranscriptionRun
) -> AsyncIterator[TranscriptionRun]:
    """Consume ``run`` inside this: the caller's limits are taken (no tokens reserved) and an upstream
    slot held; at the end, however it ends, its audio seconds are counted and the job settled."""
    if limiter is not None:
        job.grant = await limiter.acquire(principal, job.model.id, 0)
    job.dispatched()
    try:
        async with job.model.admission.slot(job.stats):
            yield run
    finally:
        AUDIO_SECONDS.labels(job.model.id, job.project).inc(run.duration)
        await job.settle()
