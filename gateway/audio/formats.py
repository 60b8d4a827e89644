"""A finished transcription in OpenAI's ``response_format``s, and its stream events.

Pure functions over :class:`~gateway.audio.transcript.Transcription`: ``json`` and
``verbose_json`` give dicts for the transport to serialize, ``text``, ``srt`` and ``vtt`` give the
body as a string. A stream (``stream: true``, ``json`` or ``text`` only) is one
``transcript.text.delta`` event per finished segment and a ``transcript.text.done`` event.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any, Literal, TypeGuard

from gateway.audio.transcript import Segment, Transcription, language_name
from gateway.errors import InvalidRequest, UnsupportedParameter

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("json", "text", "srt", "verbose_json", "vtt")
STREAM_FORMATS: tuple[ResponseFormat, ...] = ("json", "text")
TIMESTAMP_GRANULARITIES = ("segment", "word")

CONTENT_TYPES: dict[ResponseFormat, str] = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",  # as OpenAI serves them
    "vtt": "text/plain; charset=utf-8",
}


def _is_format(value: str) -> TypeGuard[ResponseFormat]:
    return value in RESPONSE_FORMATS


def response_format(value: str | None, *, stream: bool = False) -> ResponseFormat:
    """The validated ``response_format`` (``json`` when absent). Raises :class:`InvalidRequest`
    for an unknown one (``param="response_format"``), and for ``stream`` with a format other than
    ``json`` or ``text`` (``param="stream"``), as OpenAI does."""
    fmt = "json" if value is None or value == "" else value
    if not _is_format(fmt):
        raise InvalidRequest(
            f"unsupported response_format {value!r}: expected one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
        )
    if stream and fmt not in STREAM_FORMATS:
        raise InvalidRequest(f"stream is not supported with response_format {fmt!r}: use json or text", param="stream")
    return fmt


def timestamp_granularities(values: Sequence[str] | None, fmt: ResponseFormat) -> None:
    """Check ``timestamp_granularities[]``: ``segment`` only, and only with ``verbose_json``
    (segments are always there in verbose_json). Word timestamps are not supported."""
    if not values:
        return
    for value in values:
        if value not in TIMESTAMP_GRANULARITIES:
            raise InvalidRequest(
                f"unknown timestamp granularity {value!r}: expected segment", param="timestamp_granularities"
            )
        if value == "word":
            raise UnsupportedParameter(
                "word timestamps are not supported: use segment", param="timestamp_granularities"
            )
    if fmt != "verbose_json":
        raise InvalidRequest(
            "timestamp_granularities needs response_format verbose_json", param="timestamp_granularities"
        )


def needs_timestamps(fmt: ResponseFormat) -> bool:
    """Whether ``fmt`` shows segment times (so the model must be asked for timestamps)."""
    return fmt in ("verbose_json", "srt", "vtt")


def usage(duration: float) -> dict[str, Any]:
    """OpenAI's usage for audio billed by length: whole seconds, rounded up."""
    return {"type": "duration", "seconds": math.ceil(round(duration, 3))}


def render(fmt: ResponseFormat, transcription: Transcription) -> dict[str, Any] | str:
    """The response body: a dict to send as JSON, or a string to send as ``CONTENT_TYPES[fmt]``."""
    if fmt == "json":
        return render_json(transcription)
    if fmt == "verbose_json":
        return render_verbose_json(transcription)
    if fmt == "srt":
        return render_srt(transcription.segments)
    if fmt == "vtt":
        return render_vtt(transcription.segments)
    return render_text(transcription)


def render_json(transcription: Transcription) -> dict[str, Any]:
    return {"text": transcription.text, "usage": usage(transcription.duration)}


def render_text(transcription: Transcription) -> str:
    return transcription.text + "\n" if transcription.text else ""


def render_verbose_json(transcription: Transcription) -> dict[str, Any]:
    """OpenAI's verbose_json. ``language`` is the English name (``"english"``), ``"unknown"`` when
    neither the client nor the model said; ``tokens`` are empty and ``avg_logprob`` and
    ``no_speech_prob`` are the segments' unmeasured defaults (the model returns text only);
    ``compression_ratio`` is measured on each segment's text, as Whisper does on a window's."""
    return {
        "task": transcription.task,
        "language": language_name(transcription.language) or "unknown",
        "duration": round(transcription.duration, 3),
        "text": transcription.text,
        "segments": [_verbose_segment(segment, transcription.temperature) for segment in transcription.segments],
        "usage": usage(transcription.duration),
    }


def _verbose_segment(segment: Segment, temperature: float) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": [],
        "temperature": temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": compression_ratio(segment.text),
        "no_speech_prob": segment.no_speech_prob,
    }


def compression_ratio(text: str) -> float:
    """Whisper's repetition gauge: the UTF-8 text's length over its zlib-compressed length."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def render_srt(segments: Sequence[Segment]) -> str:
    """SubRip: numbered cues from 1, ``HH:MM:SS,mmm`` times, a blank line after each cue."""
    return "".join(
        f"{number}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{_cue_text(s)}\n\n"
        for number, s in enumerate(segments, 1)
    )


def render_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT: the header, then ``HH:MM:SS.mmm`` cues, a blank line after each."""
    cues = "".join(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{_cue_text(s)}\n\n" for s in segments)
    return "WEBVTT\n\n" + cues


def timestamp(seconds: float, decimal_marker: str) -> str:
    """``3723.5`` -> ``01:02:03,500`` (SRT, ``","``) or ``01:02:03.500`` (VTT, ``"."``); hours grow
    past two digits as needed."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _cue_text(segment: Segment) -> str:
    # an arrow or blank line inside a cue's text would end the cue for a subtitle parser
    return " ".join(segment.text.replace("-->", "->").split())


def delta_event(delta: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": delta}


def done_event(text: str, duration: float) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": text, "usage": usage(duration)}


class TextStream:
    """The stream events of one transcription: :meth:`delta` per finished segment, then
    :meth:`done`. The deltas concatenate to the done event's ``text``, which equals
    :attr:`Transcription.text`."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[str] = []

    def delta(self, segment: Segment) -> dict[str, Any] | None:
        """The delta event for ``segment``; None when it adds no text."""
        text = segment.text if self._parts else segment.text.lstrip()
        if not text:
            return None
        self._parts.append(text)
        return delta_event(text)

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def done(self, duration: float) -> dict[str, Any]:
        return done_event(self.text, duration)
