"""Whisper's log-mel front end (gateway.embedded.whisper_features) against properties worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.embedded.whisper_features import (
    HOP_LENGTH,
    N_FFT,
    N_FRAMES,
    N_MELS,
    N_SAMPLES,
    SAMPLE_RATE,
    hann_window,
    hz_to_mel,
    log_mel,
    mel_filters,
    mel_to_hz,
    pad_or_trim,
    power_spectrum,
)

BIN_HZ = SAMPLE_RATE / N_FFT  # 40 Hz between FFT bins


def tone(hz: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_shape_dtype_and_range() -> None:
    rng = np.random.default_rng(0)
    features = log_mel(rng.uniform(-1, 1, 5 * SAMPLE_RATE).astype(np.float32))
    assert features.shape == (1, N_MELS, N_FRAMES) == (1, 80, 3000)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    # log10 held within 8 of the maximum, then (x + 4) / 4: a span of at most 2
    assert features.max() - features.min() <= 2.0 + 1e-6
    # the loudest mel bin of full-scale noise: log10 of its power, well above the floor
    assert -1.0 < features.max() < 3.0


def test_silence_is_constant_at_the_floor() -> None:
    features = log_mel(np.zeros(SAMPLE_RATE, dtype=np.float32))
    assert np.all(features == features[0, 0, 0])
    assert features[0, 0, 0] == pytest.approx((np.log10(1e-10) + 4) / 4)  # -1.5


def test_a_440_hz_tone_lands_in_its_mel_bin() -> None:
    # 440 Hz is 6.6 mel (linear part: 3 mel per 200 Hz). The 82 filter edges are spaced
    # mel(8 kHz) / 81 = 45.245 / 81 = 0.5586 mel apart; filter k peaks at edge k + 1, so filter 11
    # peaks at 6.70 mel (447 Hz), the closest centre to 440 Hz.
    features = log_mel(tone(440, 2.0))[0]
    middle = features[:, 50:150]  # frames well inside the tone
    assert set(np.argmax(middle, axis=0).tolist()) == {11}
    assert middle[11].min() > features[11, 250:].max()  # and there only while the tone lasts


def test_mel_scale_is_slaney() -> None:
    hz = np.array([0.0, 200.0, 1000.0, 6400.0])
    np.testing.assert_allclose(hz_to_mel(hz), [0.0, 3.0, 15.0, 42.0])  # linear, then 27 mel per x6.4
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz)


def test_mel_filters() -> None:
    filters = mel_filters()
    assert filters.shape == (N_MELS, N_FFT // 2 + 1) and filters.dtype == np.float32
    assert filters is mel_filters()  # computed once
    # filter 0: a triangle 0 Hz - 37.24 Hz - 74.47 Hz (edges 0.5586 mel apart) of height 2 / 74.47;
    # the only FFT bin under it is 40 Hz, on the falling side
    edge = float(mel_to_hz(hz_to_mel(np.array(SAMPLE_RATE / 2)) / 81))
    expected = (2 * edge - BIN_HZ) / edge * 2 / (2 * edge)
    assert filters[0, 1] == pytest.approx(expected, rel=1e-6)
    assert filters[0, 1] == pytest.approx(0.0248626, rel=1e-5)
    assert np.count_nonzero(filters[0]) == 1
    # slaney normalisation: every triangle has unit area in Hz, which the 40 Hz bins sample well
    # once the triangles are wide
    areas = filters.sum(axis=1) * BIN_HZ
    np.testing.assert_allclose(areas[40:], 1.0, atol=0.08)
    assert (filters >= 0).all() and (filters.sum(axis=1) > 0).all()


def test_periodic_hann_window() -> None:
    window = hann_window()
    assert window.shape == (N_FFT,)
    assert window[0] == 0.0 and window[N_FFT // 2] == pytest.approx(1.0)
    np.testing.assert_allclose(window[1:], window[1:][::-1])  # periodic: symmetric about N/2


def test_power_spectrum_of_a_bin_centred_tone() -> None:
    # 1 kHz is FFT bin 25. A Hann window (sum N/2) puts amplitude A * N / 4 in that bin and half of
    # it in each neighbour, nothing further out.
    amplitude = 0.5
    power = power_spectrum(pad_or_trim(tone(1000, 30.0, amplitude)))
    assert power.shape == (1, N_FRAMES, N_FFT // 2 + 1)
    frame = power[0, 1000]
    peak = (amplitude * N_FFT / 4) ** 2
    assert frame[25] == pytest.approx(peak, rel=1e-6)
    assert frame[24] == pytest.approx(peak / 4, rel=1e-6) and frame[26] == pytest.approx(peak / 4, rel=1e-6)
    assert frame[:23].max() < peak * 1e-8 and frame[28:].max() < peak * 1e-8


def test_frames_are_centred_on_their_hop() -> None:
    # frame t covers samples t * 160 +- 200: an impulse at sample 16000 is the centre of frame 100,
    # where the window is 1, so that frame's spectrum is flat at power 1
    audio = np.zeros((1, N_SAMPLES), dtype=np.float32)
    audio[0, 100 * HOP_LENGTH] = 1.0
    power = power_spectrum(audio)[0]
    np.testing.assert_allclose(power[100], 1.0, rtol=1e-9)
    assert power[98].max() == 0.0 and power[102].max() == 0.0
    assert 0 < power[99].max() < 1.0  # the impulse 160 samples from the centre of frame 99


def test_padding_and_trimming() -> None:
    short = tone(300, 1.0)
    padded = np.zeros(N_SAMPLES, dtype=np.float32)
    padded[: short.size] = short
    np.testing.assert_array_equal(log_mel(short), log_mel(padded))
    long = tone(300, 31.0)
    np.testing.assert_array_equal(log_mel(long), log_mel(long[:N_SAMPLES]))
    assert pad_or_trim(long).shape == (1, N_SAMPLES)
    with pytest.raises(ValueError):
        pad_or_trim(np.zeros((1, 2, 3)))


def test_a_batch_is_its_rows_alone() -> None:
    rows = [tone(440, 1.0), tone(2000, 3.0, 0.1)]
    batch = log_mel(np.stack([pad_or_trim(r)[0] for r in rows]))
    assert batch.shape == (2, N_MELS, N_FRAMES)
    for row, features in zip(rows, batch, strict=True):
        np.testing.assert_array_equal(features, log_mel(row)[0])  # each clip normalised to its own maximum
