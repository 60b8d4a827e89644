"""POST /v1/audio/transcriptions and /v1/audio/translations (multipart, as OpenAI serves them).

Once the options are checked and the caller's limits taken, the upload is decoded to 16 kHz mono
(soundfile, off the event loop), cut into 30-second windows, and each window goes to the Whisper
model on Triton as one unary call (:mod:`gateway.core.transcription`, shared with the gRPC API, and
:mod:`gateway.core.transcribe`). ``stream: true`` sends a
``transcript.text.delta`` event as each segment is finished and a ``transcript.text.done`` event with
the usage; the headers wait for the first window, so a failure before it still gets a proper status.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.context import CONFIG, JOB, LIMITER, REGISTRY, STARTED
from gateway.api.form import Form, read_form
from gateway.api.formats import sse_event
from gateway.api.observe import CLIENT_GONE, stamp_headers
from gateway.api.respond import SSE_HEADERS, write_error
from gateway.audio.formats import (
    CONTENT_TYPES,
    TextStream,
    needs_timestamps,
    render,
    response_format,
    timestamp_granularities,
)
from gateway.audio.transcript import Segment
from gateway.core.job import start_job
from gateway.core.transcribe import TranscribeOptions, TranscriptionRun
from gateway.core.transcription import TRANSCRIBE, transcribing
from gateway.errors import GatewayError, InternalError, InvalidRequest, UnsupportedParameter

log = logging.getLogger(__name__)

_FIELDS = {
    "model",
    "language",
    "prompt",
    "temperature",
    "response_format",
    "stream",
    "timestamp_granularities[]",
    "timestamp_granularities",
    "chunking_strategy",
    "include[]",
}


async def transcriptions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "transcribe")


async def translations(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "translate")


async def _handle(request: web.Request, task: str) -> web.StreamResponse:
    config = request.app[CONFIG]
    form = await read_form(request, config.max_audio_bytes)
    unknown = sorted(set(form.fields) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    model_id = form.one("model")
    if not model_id:
        raise InvalidRequest("Missing required parameter: 'model'", param="model")
    if form.file is None:
        raise InvalidRequest("Missing required parameter: 'file'", param="file")
    stream = _flag(form.one("stream"), "stream")
    fmt = response_format(form.one("response_format"), stream=stream)
    timestamp_granularities(
        form.fields.get("timestamp_granularities[]") or form.fields.get("timestamp_granularities"), fmt
    )
    if form.fields.get("include[]"):
        raise UnsupportedParameter("'include' (logprobs) is not supported for transcriptions", param="include")
    if form.one("chunking_strategy") not in (None, "auto"):
        raise UnsupportedParameter("only chunking_strategy 'auto' is supported", param="chunking_strategy")
    options = TranscribeOptions(
        language=None if task == "translate" else form.one("language"),
        prompt=form.one("prompt"),
        temperature=_temperature(form),
        timestamps=True if needs_timestamps(fmt) else None,
        task=task,
    )
    principal = principal_of(request)
    job = request[JOB] = start_job(principal, request.app[REGISTRY], model_id, TRANSCRIBE, request[STARTED], "transcr")
    limiter = request.app[LIMITER]
    async with transcribing(
        job, principal, limiter, form.file, form.filename, options, max_seconds=config.max_audio_seconds
    ) as run:
        if stream:
            return await _stream(request, run)
        result = await run.result()
    body = render(fmt, result)
    if isinstance(body, str):
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPES[fmt]})
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _stream(request: web.Request, run: TranscriptionRun) -> web.StreamResponse:
    text = TextStream()
    segments = aiter(run)
    try:
        return await _write_stream(request, run, segments, text)
    finally:
        await segments.aclose()


async def _write_stream(
    request: web.Request, run: TranscriptionRun, segments: AsyncGenerator[Segment, None], text: TextStream
) -> web.StreamResponse:
    events: list[dict[str, Any]] = []
    first = await anext(segments, None)  # errors up to here get a real HTTP status
    if first is not None and (event := text.delta(first)) is not None:
        events.append(event)
    response = web.StreamResponse(headers=SSE_HEADERS)
    response.enable_chunked_encoding()
    stamp_headers(request, response)
    try:
        await response.prepare(request)
        for event in events:
            await response.write(sse_event(event))
        async for segment in segments:
            if (event := text.delta(segment)) is not None:
                await response.write(sse_event(event))
        await response.write(sse_event(text.done(run.duration)))
    except ConnectionError:
        request[CLIENT_GONE] = True
        return response
    except GatewayError as exc:
        log.warning("transcription stream failed after the first byte: %s", exc.message)
        await write_error(response, exc)
    except Exception as exc:
        log.exception("transcription stream failed after the first byte")
        await write_error(response, InternalError(f"internal error: {type(exc).__name__}"))
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() == "false":
        return False
    if value.lower() == "true":
        return True
    raise InvalidRequest(f"Invalid value for '{name}': expected true or false", param=name)


def _temperature(form: Form) -> float | None:
    value = form.one("temperature")
    if value is None or value == "":
        return None
    try:
        return float(value)  # its range is checked with the other options (core.transcription)
    except ValueError:
        raise InvalidRequest("Invalid type for 'temperature': expected a number", param="temperature") from None
