"""Transcription of a whole recording, window by window, against any engine.

The engine is one call, ``infer(tensors) -> tensors``, for one window (TensorRT-LLM Whisper's
names)::

    in:  WAV float32 [1, N] (16 kHz, N <= 480,000), WAV_LENS int32 [1, 1],
         TEXT_PREFIX bytes [1, 1], TEMPERATURE float32 [1, 1] (only when asked for)
    out: TRANSCRIPTS bytes [1, 1] (or [1])

:func:`transcribe` returns a :class:`TranscriptionRun`: iterate it for the segments as windows
finish (its ``language`` is known after the first window), or ``await run.result()``.

Windowing. With timestamps, the next window starts where the last complete segment ended when the
window ended mid-segment (that segment is heard again, whole), else where the window ended; without
them, windows are consecutive. ``TranscribeOptions.timestamps`` None (the default) asks for them
only when the recording is longer than one window: a short clip of ``json``/``text`` decodes
without them, a long one gets the seek-based windowing. Formats that show times (verbose_json,
srt, vtt) must set it True.

Context. The client's prompt goes with the first window; each later window gets the text of the one
before as ``<|startofprev|>`` context (its last :data:`CONTEXT_CHARS` characters), as Whisper
conditions on previous text, except above temperature 0.5 where Whisper drops it to break
repetition loops. Once the model has named the language, later windows are told it.

Translation (``task="translate"``) is the same walk with ``<|translate|>`` in the prefix: the
language token stays the spoken one, and the result's language is English, the transcript's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.audio.transcript import (
    Parsed,
    Segment,
    Transcription,
    join_text,
    normalize_language,
    parse_transcript,
    text_prefix,
)
from gateway.audio.windows import SAMPLE_RATE, WINDOW_SECONDS, Window, Windows
from gateway.errors import UpstreamError

Infer = Callable[[dict[str, NDArray[Any]]], Awaitable[Mapping[str, NDArray[Any]]]]
"""One model call: the window's input tensors -> the output tensors (``TRANSCRIPTS``)."""

CONTEXT_CHARS = 200
MIN_SEEK_SECONDS = 1.0
"""A window that ended mid-segment moves on at least this far: less is treated as the whole
window (its open segment is kept, ending at the window's end), so a model that keeps opening
segments it never closes cannot stall the walk."""
NO_CONTEXT_ABOVE_TEMPERATURE = 0.5
TRANSLATION_LANGUAGE = "en"
"""What a translation's result is in (OpenAI's verbose_json says ``"language": "english"``)."""


@dataclass(frozen=True, slots=True)
class TranscribeOptions:
    """What a transcription asks of the model.

    ``language``: an ISO-639-1 code (or English name) Whisper knows, None to detect it.
    ``prompt``: text the first window continues from (names, spelling, style).
    ``temperature``: sent as ``TEMPERATURE`` when set, else the model's default.
    ``timestamps``: True always, False never, None only for recordings longer than one window.
    ``task``: ``transcribe``, or ``translate`` (into English).
    """

    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    timestamps: bool | None = None
    task: str = "transcribe"


class TranscriptionRun:
    """One recording's transcription in progress: iterate once for the :class:`Segment`s in order,
    or ``await result()``.

    ``language`` is the spoken language: the client's, or the model's once it has said (a
    translation's result is in English whatever it is). ``duration`` is the whole recording's
    length; ``heard`` how much of it has been transcribed so far: the end of the last window the
    model answered with a transcript, the whole duration once the run has finished, 0 before.
    """

    __slots__ = ("_infer", "_options", "_samples", "_started", "duration", "heard", "language", "segments")

    def __init__(self, infer: Infer, samples: NDArray[np.float32], options: TranscribeOptions) -> None:
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got shape {samples.shape}")
        self._infer = infer
        self._samples = samples
        self._options = options
        self._started = False
        self.language: str | None = normalize_language(options.language)
        self.duration = len(samples) / SAMPLE_RATE
        self.heard = 0.0
        self.segments: list[Segment] = []

    def __aiter__(self) -> AsyncGenerator[Segment, None]:
        if self._started:
            raise RuntimeError("a transcription runs once")
        self._started = True
        return self._run()

    async def result(self) -> Transcription:
        """Run to the end and return the whole transcription (after an iteration: what it yielded).
        Its ``language`` is the transcript's: the spoken one, or English for a translation."""
        if not self._started:
            async for _ in self:
                pass
        return Transcription(
            text=join_text(self.segments),
            segments=tuple(self.segments),
            language=TRANSLATION_LANGUAGE if self._options.task == "translate" else self.language,
            duration=self.duration,
            task=self._options.task,
            temperature=self._options.temperature or 0.0,
        )

    async def _run(self) -> AsyncGenerator[Segment, None]:
        options = self._options
        windows = Windows(self._samples)
        timestamps = options.timestamps
        if timestamps is None:
            timestamps = self.duration > WINDOW_SECONDS
        conditioned = options.temperature is None or options.temperature <= NO_CONTEXT_ABOVE_TEMPERATURE
        context = options.prompt
        while (window := windows.window()) is not None:
            prefix = text_prefix(self.language, context, timestamps, options.task, max_prompt_chars=CONTEXT_CHARS)
            outputs = await self._infer(window_tensors(window, prefix, options.temperature))
            parsed = parse_transcript(
                transcript_text(outputs), window.offset, window.seconds, first_id=len(self.segments)
            )
            self.heard = max(self.heard, window.end)
            if self.language is None and parsed.language is not None:
                self.language = parsed.language
            segments, consumed = _take(parsed, window)
            for segment in segments:
                self.segments.append(segment)
                yield segment
            if conditioned:
                text = join_text(segments)
                context = text if text else context
            else:
                context = None
            windows.advance(consumed)
        self.heard = self.duration  # a remainder too short to send is part of the whole


def transcribe(infer: Infer, samples: NDArray[np.float32], options: TranscribeOptions) -> TranscriptionRun:
    """Transcribe ``samples`` (float32 mono at 16 kHz, as :func:`~gateway.audio.decode.decode_audio`
    gives them) with ``infer``; see :class:`TranscriptionRun`."""
    return TranscriptionRun(infer, samples, options)


def window_tensors(window: Window, prefix: str, temperature: float | None) -> dict[str, NDArray[Any]]:
    """The model's inputs for one window."""
    wav = np.ascontiguousarray(window.samples, dtype=np.float32).reshape(1, -1)
    tensors: dict[str, NDArray[Any]] = {
        "WAV": wav,
        "WAV_LENS": np.array([[wav.shape[1]]], dtype=np.int32),
        "TEXT_PREFIX": np.array([[prefix.encode()]], dtype=object),
    }
    if temperature is not None:
        tensors["TEMPERATURE"] = np.array([[temperature]], dtype=np.float32)
    return tensors


def transcript_text(outputs: Mapping[str, NDArray[Any]]) -> str:
    """The text of ``TRANSCRIPTS`` (one bytes or str element). Raises :class:`UpstreamError`
    when the model's answer has none."""
    array = outputs.get("TRANSCRIPTS")
    if array is None or np.size(array) == 0:
        raise UpstreamError("the transcription model returned no TRANSCRIPTS")
    item = np.asarray(array).reshape(-1)[0]
    if isinstance(item, bytes | bytearray | np.bytes_):
        return bytes(item).decode("utf-8", errors="replace")
    return str(item)


def _take(parsed: Parsed, window: Window) -> tuple[tuple[Segment, ...], float | None]:
    """The segments a window yields, and how far into it the next window starts (None: its end)."""
    open_segment = parsed.incomplete
    if open_segment is None:
        return parsed.segments, None
    consumed = open_segment.start - window.offset
    if not window.is_last and consumed >= MIN_SEEK_SECONDS:  # hear the open segment again, whole
        return parsed.segments, consumed
    if open_segment.text:  # the last window, or no usable seek: keep the open segment to the end
        return (*parsed.segments, open_segment), None
    return parsed.segments, None
