"""Whisper's 30 s windows over a whole recording.

Whisper hears at most 30 s at a time. :class:`Windows` hands out one window at a time and moves on
by what the caller says the model consumed: the whole window, or (seek-based windowing, as
Whisper's own ``transcribe`` does) only up to the end of the last complete timestamped segment when
the window ended mid-segment, so that segment is heard again, whole, at the start of the next one::

    windows = Windows(samples)
    while (window := windows.window()) is not None:
        ...  # transcribe window.samples
        windows.advance(consumed_seconds)  # None: the whole window
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30.0
MIN_TAIL_SECONDS = 0.1
"""A remainder shorter than this after the first window is dropped: too short to hold a word."""


@dataclass(frozen=True, slots=True, eq=False)
class Window:
    """``samples`` (a view of the recording) from sample ``start``; times in seconds."""

    index: int
    start: int
    samples: NDArray[Any]
    sample_rate: int = SAMPLE_RATE
    is_last: bool = False  # reaches the end of the recording

    @property
    def offset(self) -> float:
        """Where the window starts, in seconds from the start of the recording."""
        return self.start / self.sample_rate

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> float:
        return (self.start + len(self.samples)) / self.sample_rate


class Windows:
    """Consecutive windows of at most ``window_seconds`` over ``samples`` (mono, ``sample_rate``)."""

    __slots__ = ("_index", "_min_tail", "_position", "_samples", "_size", "sample_rate")

    def __init__(
        self,
        samples: NDArray[Any],
        *,
        sample_rate: int = SAMPLE_RATE,
        window_seconds: float = WINDOW_SECONDS,
        min_tail_seconds: float = MIN_TAIL_SECONDS,
    ) -> None:
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got shape {samples.shape}")
        self._samples = samples
        self.sample_rate = sample_rate
        self._size = max(1, round(window_seconds * sample_rate))
        self._min_tail = round(min_tail_seconds * sample_rate)
        self._position = 0
        self._index = 0

    @property
    def duration(self) -> float:
        """The whole recording, in seconds."""
        return len(self._samples) / self.sample_rate

    def window(self) -> Window | None:
        """The current window, or None when the recording is used up (or only a remainder shorter
        than ``min_tail_seconds`` is left after the first window)."""
        total = len(self._samples)
        left = total - self._position
        if left <= 0 or (self._position > 0 and left < self._min_tail):
            return None
        stop = min(total, self._position + self._size)
        return Window(
            self._index,
            self._position,
            self._samples[self._position : stop],
            self.sample_rate,
            is_last=stop >= total or total - stop < self._min_tail,
        )

    def advance(self, consumed_seconds: float | None = None) -> None:
        """Move past what the model consumed of the current window: ``consumed_seconds`` from its
        start, or the whole window for None. Anything not inside the window (zero or less, past its
        end) counts as the whole window, so every call makes progress."""
        size = min(self._size, len(self._samples) - self._position)
        step = size
        if consumed_seconds is not None:
            consumed = round(consumed_seconds * self.sample_rate)
            if 0 < consumed < size:
                step = consumed
        self._position += max(step, 1)
        self._index += 1
