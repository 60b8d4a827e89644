"""Whisper's log-mel front end in numpy: 30 s of 16 kHz audio -> float32 [80, 3000].

The steps are those of Whisper's published feature extractor: pad (zeros) or trim to 30 s; a
centred STFT (reflect padding of n_fft/2 each side) with a periodic Hann window, n_fft 400, hop 160,
keeping 3000 of its 3001 frames; the power spectrum; 80 triangular mel filters on the Slaney mel
scale (linear below 1 kHz, logarithmic above) with area ("slaney") normalisation; log10 clamped at
1e-10; values held within 8 of the clip's maximum; then (x + 4) / 4.

Every function takes a batch: [batch, samples] in, [batch, 80, 3000] out.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480,000 samples in one window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3,000 frames in one window
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # in log10 units: 80 dB

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

# the Slaney mel scale: linear below _BREAK_HZ, logarithmic above
_BREAK_HZ = 1000.0
_HZ_PER_MEL = 200.0 / 3.0
_BREAK_MEL = _BREAK_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: Float64Array) -> Float64Array:
    linear = hz / _HZ_PER_MEL
    log = _BREAK_MEL + np.log(np.maximum(hz, _BREAK_HZ) / _BREAK_HZ) / _LOG_STEP
    return np.where(hz >= _BREAK_HZ, log, linear)


def mel_to_hz(mel: Float64Array) -> Float64Array:
    linear = mel * _HZ_PER_MEL
    log = _BREAK_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _BREAK_MEL) - _BREAK_MEL))
    return np.where(mel >= _BREAK_MEL, log, linear)


@cache
def mel_filters(n_mels: int = N_MELS) -> Float32Array:
    """[n_mels, n_fft/2 + 1]: triangles between mel-spaced edges from 0 Hz to Nyquist, each of unit area."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges_mel = np.linspace(0.0, hz_to_mel(np.array(SAMPLE_RATE / 2)), n_mels + 2)
    edges = mel_to_hz(edges_mel)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= 2.0 / (upper - lower)  # slaney normalisation: every filter has the same area
    filters: Float32Array = weights.astype(np.float32)
    filters.setflags(write=False)
    return filters


@cache
def hann_window() -> Float64Array:
    """The periodic Hann window of N_FFT points (the symmetric one of N_FFT + 1, its last point dropped)."""
    window: Float64Array = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    window.setflags(write=False)
    return window


def pad_or_trim(samples: npt.ArrayLike, length: int = N_SAMPLES) -> Float32Array:
    """[batch, length]: each row cut or zero-padded at its end. A 1-D input is one row."""
    audio = np.asarray(samples, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2:
        raise ValueError(f"audio must be [samples] or [batch, samples], not {audio.shape}")
    if audio.shape[1] >= length:
        return np.ascontiguousarray(audio[:, :length])
    out = np.zeros((audio.shape[0], length), dtype=np.float32)
    out[:, : audio.shape[1]] = audio
    return out


def power_spectrum(audio: Float32Array) -> Float64Array:
    """[batch, N_FRAMES, N_FFT/2 + 1] of 30-s rows: centred frames (reflect padding), Hann window."""
    padded = np.pad(audio.astype(np.float64), ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=-1)[:, ::HOP_LENGTH][:, :N_FRAMES]
    spectrum = np.fft.rfft(frames * hann_window(), axis=-1)
    power: Float64Array = spectrum.real**2 + spectrum.imag**2
    return power


def log_mel(audio: npt.ArrayLike) -> Float32Array:
    """[batch, 80, 3000] float32 features of [batch, samples] (or [samples]) audio, 16 kHz in [-1, 1]."""
    rows = pad_or_trim(audio)
    features = np.empty((rows.shape[0], N_MELS, N_FRAMES), dtype=np.float32)
    filters = mel_filters().astype(np.float64)
    for i, row in enumerate(rows):  # one row at a time: a batch of 8 would hold ~80 MB of spectra at once
        mel = filters @ power_spectrum(row[None, :])[0].T  # [80, 3000]
        log_spec = np.log10(np.maximum(mel, LOG_FLOOR))
        log_spec = np.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
        features[i] = (log_spec + 4.0) / 4.0
    return features
