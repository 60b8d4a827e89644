"""Uploaded audio -> float32 mono samples at Whisper's 16 kHz.

``soundfile``'s wheel bundles a libsndfile that reads WAV, FLAC, Ogg (Vorbis, Opus) and MP3 (and
a few rarer formats: AIFF, AU, CAF, W64, RF64); ``soxr`` resamples, as a stream, block by block.
Both release the GIL while they work, so :func:`decode_audio_async` runs the decoding in a small
thread pool, off the event loop. Anything that is not audio they can read becomes
:class:`InvalidRequest` with ``param="file"``.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import soundfile  # type: ignore[import-untyped, unused-ignore]
import soxr  # type: ignore[import-untyped, unused-ignore]
from numpy.typing import NDArray
from soundfile import _ffi, _snd  # type: ignore[import-untyped, unused-ignore, attr-defined]

from gateway.errors import InvalidRequest

SAMPLE_RATE = 16_000
SUPPORTED_FORMATS = ("wav", "flac", "ogg", "opus", "mp3")
"""What decodes here (by content, whatever the file is called); Ogg carries Vorbis or Opus."""
_SUPPORTED_TEXT = "wav, flac, ogg (vorbis, opus) and mp3"

# formats OpenAI takes that libsndfile cannot read: named in the error, so the client knows why
_UNSUPPORTED = {"m4a", "mp4", "mpeg", "mpga", "webm", "aac", "wma", "amr", "3gp"}

BLOCK_FRAMES = 1 << 16
"""Frames read, downmixed and resampled at a time (0.5 MiB of float32 for 48 kHz stereo)."""
_RESAMPLE_SLACK = 16
"""Output samples allowed beyond the header's length, for the resampler's rounding."""
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
    from its header before decoding and against what decodes. Raises :class:`InvalidRequest`
    (``param="file"``) for an empty, corrupt, unsupported or too long file.

    The file is decoded :data:`BLOCK_FRAMES` frames at a time, each block downmixed and resampled
    as a stream into the output, so the memory it takes is the output's and one block's, whatever
    the file's rate and channels.
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
            samples, read = _decode_blocks(sound, rate, frames, max_seconds, filename)
    except (soundfile.SoundFileError, RuntimeError, ValueError, EOFError) as exc:
        raise _undecodable(filename, exc) from None
    if read == 0:
        raise _invalid("the audio file contains no samples", filename)
    return samples


def _decode_blocks(
    sound: soundfile.SoundFile, rate: int, frames: int, max_seconds: float | None, filename: str | None
) -> tuple[NDArray[np.float32], int]:
    """The samples of ``sound`` at 16 kHz mono, and how many frames were read from it."""
    size = min(BLOCK_FRAMES, max(frames, 1))
    block = np.empty((size, int(sound.channels)), dtype=np.float32)
    mono = np.empty(size, dtype=np.float32)
    resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
    output = _Output(math.ceil(frames * SAMPLE_RATE / rate) + _RESAMPLE_SLACK)
    read = 0
    while True:
        count = _read_into(sound, block)
        last = count < size
        read += count
        chunk = _downmix(block[:count], mono[:count])
        output.append(chunk if resampler is None else resampler.resample_chunk(chunk, last=last))
        if max_seconds is not None and output.size > max_seconds * SAMPLE_RATE:  # headers can be wrong
            raise _too_long(output.size / SAMPLE_RATE, max_seconds, filename, at_least=not last)
        if last:
            return output.trimmed(), read


def _read_into(sound: soundfile.SoundFile, block: NDArray[np.float32]) -> int:
    """Frames of ``sound`` read into ``block`` (C-contiguous, frames x channels): how many, fewer than
    fit only at the end of the file.

    libsndfile's ``sf_readf_float`` is called directly, on the handle soundfile opened:
    ``SoundFile.read`` seeks back to where it stopped after every read, and a seek in libsndfile's
    MP3 decoder restarts mpg123 without its bit reservoir, so MP3 read block by block through it
    comes out near-silent for a few frames after each block."""
    count = int(_snd.sf_readf_float(sound._file, _ffi.from_buffer("float[]", block), len(block)))
    error = int(_snd.sf_error(sound._file))
    if error:
        raise soundfile.LibsndfileError(error)
    return count


def _downmix(block: NDArray[np.float32], mono: NDArray[np.float32]) -> NDArray[np.float32]:
    """The mean of ``block``'s channels (its columns), in ``mono``; a single channel as it is.

    Column by column: the same sums as ``block.mean(axis=1)``, many times faster on few columns."""
    channels = block.shape[1]
    if channels == 1:
        return block[:, 0]
    np.add(block[:, 0], block[:, 1], out=mono)
    for channel in range(2, channels):
        np.add(mono, block[:, channel], out=mono)
    np.divide(mono, channels, out=mono)
    return mono


class _Output:
    """A float32 buffer filled from the front: allocated once at the length the header gives,
    grown only when a file holds more than its header said, trimmed in place at the end. What
    goes in is made safe as it lands: NaN to 0, clipped to [-1, 1]."""

    __slots__ = ("_buffer", "size")

    def __init__(self, capacity: int) -> None:
        self._buffer = np.empty(max(capacity, 1), dtype=np.float32)
        self.size = 0

    def append(self, chunk: NDArray[np.float32]) -> None:
        end = self.size + len(chunk)
        if end > len(self._buffer):
            self._buffer.resize(max(end, len(self._buffer) + len(self._buffer) // 2), refcheck=False)
        landed = self._buffer[self.size : end]
        np.nan_to_num(chunk, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(chunk, -1.0, 1.0, out=landed)
        self.size = end

    def trimmed(self) -> NDArray[np.float32]:
        self._buffer.resize(self.size, refcheck=False)  # in place (realloc): no second copy
        return self._buffer


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


def _too_long(seconds: float, max_seconds: float, filename: str | None, *, at_least: bool = False) -> InvalidRequest:
    lasts = "more than " if at_least else ""
    return _invalid(
        f"the audio lasts {lasts}{seconds:.1f} s, longer than the {max_seconds:g} s this server takes", filename
    )


def _undecodable(filename: str | None, exc: BaseException) -> InvalidRequest:
    extension = os.path.splitext(filename or "")[1].lstrip(".").lower()
    if extension in _UNSUPPORTED:
        reason = f"{extension} files are not supported"
    else:
        detail = str(exc).rsplit(": ", 1)[-1].strip().rstrip(".")  # libsndfile's reason, not our buffer's repr
        reason = f"could not decode the audio file ({detail})" if detail else "could not decode the audio file"
    return _invalid(f"{reason}; supported formats: {_SUPPORTED_TEXT}", filename)
