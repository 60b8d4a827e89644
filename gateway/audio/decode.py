"""Uploaded audio -> float32 mono samples at Whisper's 16 kHz.

``soundfile``'s wheel bundles a libsndfile that reads WAV, FLAC, Ogg (Vorbis, Opus) and MP3 (and
a few rarer formats: AIFF, AU, CAF, W64, RF64); ``soxr`` resamples. Both release the GIL while they
work, so :func:`decode_audio_async` runs the decoding in a small thread pool, off the event loop.
Anything that is not audio they can read becomes :class:`InvalidRequest` with ``param="file"``.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import soundfile  # type: ignore[import-untyped, unused-ignore]
import soxr  # type: ignore[import-untyped, unused-ignore]
from numpy.typing import NDArray

from gateway.errors import InvalidRequest

SAMPLE_RATE = 16_000
SUPPORTED_FORMATS = ("wav", "flac", "ogg", "opus", "mp3")
"""What decodes here (by content, whatever the file is called); Ogg carries Vorbis or Opus."""
_SUPPORTED_TEXT = "wav, flac, ogg (vorbis, opus) and mp3"

# formats OpenAI takes that libsndfile cannot read: named in the error, so the client knows why
_UNSUPPORTED = {"m4a", "mp4", "mpeg", "mpga", "webm", "aac", "wma", "amr", "3gp"}

DECODE_THREADS = 4
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _invalid(message: str, filename: str | None) -> InvalidRequest:
    name = f"{filename!r}: " if filename else ""
    return InvalidRequest(f"{name}{message}", param="file")


def decode_audio(data: bytes, filename: str | None = None, *, max_seconds: float | None = None) -> NDArray[np.float32]:
    """``data`` (a whole audio file) as float32 mono samples in [-1, 1] at 16 kHz.

    Several channels are averaged into one. ``filename`` only names the file in error messages
    (the format is read from the content). ``max_seconds`` bounds the recording's length, checked
    from its header before decoding. Raises :class:`InvalidRequest` (``param="file"``) for an
    empty, corrupt, unsupported or too long file.
    """
    if not data:
        raise _invalid("the audio file is empty", filename)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            rate = int(sound.samplerate)
            frames = int(sound.frames)
            if rate <= 0:
                raise _invalid("the audio file has no sample rate", filename)
            if max_seconds is not None and frames / rate > max_seconds:
                raise _too_long(frames / rate, max_seconds, filename)
            audio: NDArray[np.float32] = sound.read(dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, ValueError, EOFError) as exc:
        raise _undecodable(filename, exc) from None
    if audio.size == 0:
        raise _invalid("the audio file contains no samples", filename)
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    samples = np.nan_to_num(np.asarray(mono, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(samples, -1.0, 1.0, out=samples)
    seconds = len(samples) / SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:  # a header may understate (MP3 has none)
        raise _too_long(seconds, max_seconds, filename)
    return samples


async def decode_audio_async(
    data: bytes,
    filename: str | None = None,
    *,
    max_seconds: float | None = None,
    executor: Executor | None = None,
) -> NDArray[np.float32]:
    """:func:`decode_audio` in ``executor`` (by default a shared pool of ``DECODE_THREADS``)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(decode_audio, data, filename, max_seconds=max_seconds)
    return await loop.run_in_executor(executor or _default_executor(), call)


def shutdown_decoders() -> None:
    """Stop the shared decoding pool (it starts again on the next use)."""
    global _executor
    with _executor_lock:
        pool, _executor = _executor, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _default_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="audio-decode")
        return _executor


def _too_long(seconds: float, max_seconds: float, filename: str | None) -> InvalidRequest:
    return _invalid(f"the audio lasts {seconds:.1f} s, longer than the {max_seconds:g} s this server takes", filename)


def _undecodable(filename: str | None, exc: BaseException) -> InvalidRequest:
    extension = os.path.splitext(filename or "")[1].lstrip(".").lower()
    if extension in _UNSUPPORTED:
        reason = f"{extension} files are not supported"
    else:
        detail = str(exc).rsplit(": ", 1)[-1].strip().rstrip(".")  # libsndfile's reason, not our buffer's repr
        reason = f"could not decode the audio file ({detail})" if detail else "could not decode the audio file"
    return _invalid(f"{reason}; supported formats: {_SUPPORTED_TEXT}", filename)
