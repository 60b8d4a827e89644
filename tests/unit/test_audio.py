"""Audio transcription without a model: decoding, prefixes, transcript parsing, windowing against
a fake engine, response formats and stream events."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import numpy as np
import pytest
import soundfile  # type: ignore[import-untyped, unused-ignore]
import soxr  # type: ignore[import-untyped, unused-ignore]
from numpy.typing import NDArray

from gateway.audio import decode
from gateway.audio.decode import SAMPLE_RATE, decode_audio, decode_audio_async
from gateway.audio.formats import (
    TextStream,
    render,
    render_srt,
    render_vtt,
    response_format,
    timestamp,
    timestamp_granularities,
    usage,
)
from gateway.audio.transcript import (
    LANGUAGES,
    Segment,
    Transcription,
    clean_prompt,
    normalize_language,
    parse_transcript,
    text_prefix,
)
from gateway.audio.windows import Windows
from gateway.core.transcribe import TranscribeOptions, transcribe, transcript_text
from gateway.errors import InvalidRequest, UnsupportedParameter, UpstreamError

# ---------------------------------------------------------------------------------------- decoding


def tone(rate: int = 44_100, seconds: float = 1.0, frequency: float = 440.0) -> NDArray[np.float32]:
    t = np.arange(round(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * frequency * t)
    stereo: NDArray[np.float32] = np.stack([left, 0.8 * left], axis=1).astype(np.float32)
    return stereo


def encode(samples: NDArray[np.float32], rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def peak_frequency(samples: NDArray[np.float32]) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate"),
    [
        ("WAV", "PCM_16", 44_100),
        ("FLAC", "PCM_16", 44_100),
        ("OGG", "VORBIS", 44_100),
        ("OGG", "OPUS", 48_000),
        ("MP3", "MPEG_LAYER_III", 44_100),
    ],
)
def test_decode_formats_to_16k_mono_and_the_tone_survives(fmt: str, subtype: str, rate: int) -> None:
    samples = decode_audio(encode(tone(rate), rate, fmt, subtype), f"tone.{fmt.lower()}")
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert abs(len(samples) - SAMPLE_RATE) <= SAMPLE_RATE // 20  # lossy codecs pad a little
    assert abs(peak_frequency(samples) - 440.0) < 5.0
    assert 0.3 < float(np.max(np.abs(samples))) <= 1.0  # mean of 0.5 and 0.4 amplitude channels
    assert float(np.sqrt(np.mean(samples**2))) > 0.2


def test_decode_keeps_16k_mono_as_is() -> None:
    mono = (0.25 * np.sin(2 * np.pi * 1000 * np.arange(8000) / SAMPLE_RATE)).astype(np.float32)
    samples = decode_audio(encode(mono, SAMPLE_RATE, "WAV", "FLOAT"), None)
    np.testing.assert_allclose(samples, mono, atol=1e-7)


@pytest.mark.parametrize("data", [b"", b"not audio at all" * 50, b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(30)])
def test_decode_rejects_empty_and_corrupt_files(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_audio(data, "upload.wav")
    assert caught.value.param == "file"
    assert "upload.wav" in caught.value.message
    if data:
        assert "wav, flac, ogg" in caught.value.message and "mp3" in caught.value.message


def test_decode_names_a_format_it_cannot_read() -> None:
    with pytest.raises(InvalidRequest, match=r"m4a files are not supported; supported formats: wav") as caught:
        decode_audio(b"\x00\x00\x00\x20ftypM4A " + bytes(100), "voice.m4a")
    assert caught.value.param == "file"


def test_decode_enforces_max_seconds() -> None:
    data = encode(tone(seconds=2.0), 44_100, "WAV", "PCM_16")
    assert len(decode_audio(data, None, max_seconds=2.5)) == 2 * SAMPLE_RATE
    with pytest.raises(InvalidRequest, match=r"2\.0 s, longer than the 1\.5 s") as caught:
        decode_audio(data, None, max_seconds=1.5)
    assert caught.value.param == "file"


def whole_file_reference(data: bytes) -> NDArray[np.float32]:
    """What decoding did before it went block by block: the whole file read at once, then downmixed,
    resampled in one go, cleaned and clipped. The streaming decoder must give the same samples."""
    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    samples = np.nan_to_num(np.asarray(mono, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    clipped: NDArray[np.float32] = np.clip(samples, -1.0, 1.0)
    return clipped


def signal(kind: str, rate: int, channels: int, seconds: float = 3.1) -> NDArray[np.float32]:
    """A test signal: ``sweep`` (a 100 Hz to 3 kHz chirp, under 8 kHz's Nyquist, quieter on the right)
    or ``hot`` (loud noise whose resampled peaks overshoot 1, so clipping is exercised)."""
    t = np.arange(round(rate * seconds)) / rate
    if kind == "sweep":
        left = 0.6 * np.sin(2 * np.pi * (100 * t + (2900 / (2 * seconds)) * t**2))
        right = 0.5 * np.sin(2 * np.pi * 330 * t + 1.0)
    else:
        rng = np.random.default_rng(rate + channels)
        left, right = rng.uniform(-0.98, 0.98, (2, len(t)))
    stereo = np.stack([left, right], axis=1)
    picked: NDArray[np.float32] = stereo[:, :channels].astype(np.float32)
    return picked


FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)


@pytest.mark.parametrize("kind", ["sweep", "hot"])
@pytest.mark.parametrize("rate", [44_100, 48_000, 16_000, 8_000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_block_decoding_equals_the_whole_file(
    fmt: str, channels: int, rate: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fmt == "opus" and rate not in OPUS_RATES:
        pytest.skip("Opus encodes 8, 12, 16, 24 and 48 kHz only")
    monkeypatch.setattr(decode, "BLOCK_FRAMES", 4099)  # many blocks, none aligned to anything (MP3's 1152)
    data = encode(signal(kind, rate, channels), rate, *FORMATS[fmt])
    expected = whole_file_reference(data)
    samples = decode_audio(data, f"signal.{fmt}", max_seconds=10.0)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == len(expected)
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-6)
    assert float(np.max(np.abs(samples))) <= 1.0


def test_block_decoding_of_the_default_block_size_and_of_a_header_that_understates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(signal("sweep", 48_000, 2, seconds=4.0), 48_000, "FLAC", "PCM_16")
    expected = whole_file_reference(data)
    np.testing.assert_allclose(decode_audio(data), expected, rtol=0, atol=1e-6)
    monkeypatch.setattr(decode, "_RESAMPLE_SLACK", -40_000)  # the output starts too small, and grows
    np.testing.assert_allclose(decode_audio(data), expected, rtol=0, atol=1e-6)


def test_block_decoding_takes_the_output_and_a_block_not_the_whole_file() -> None:
    """A minute of 48 kHz stereo is 23 MB of float32 read whole; block by block, the decoder's peak
    is its 3.8 MB output and about one block."""
    data = encode(signal("sweep", 48_000, 2, seconds=60.0), 48_000, "FLAC", "PCM_16")
    tracemalloc.start()
    try:
        samples = decode_audio(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(samples) == 60 * SAMPLE_RATE
    assert peak < samples.nbytes + 2_000_000, f"peak {peak / 1e6:.1f} MB for a {samples.nbytes / 1e6:.1f} MB output"


async def test_decode_async_runs_in_a_thread() -> None:
    samples = await decode_audio_async(encode(tone(), 44_100, "FLAC", "PCM_16"), "a.flac")
    assert len(samples) == SAMPLE_RATE
    with pytest.raises(InvalidRequest):
        await decode_audio_async(b"junk", "a.flac")


# ---------------------------------------------------------------------------------------- prefixes


def test_prefix_shapes() -> None:
    assert text_prefix("en", None, False) == "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>"
    assert text_prefix(None, None, True) == "<|startoftranscript|><|transcribe|>"
    assert text_prefix("fr", "Bonjour.", True, "translate") == (
        "<|startofprev|> Bonjour.<|startoftranscript|><|fr|><|translate|>"
    )
    assert text_prefix("English", "", False).startswith("<|startoftranscript|><|en|>")


def test_prompt_cannot_carry_special_tokens_and_is_truncated() -> None:
    prefix = text_prefix("en", "  Names: <|endoftext|> Zoë <|0.00|>and <|Ann\n", False)
    assert prefix.startswith("<|startofprev|> Names: Zoë and <Ann<|startoftranscript|>")
    long = " ".join(f"word{i}" for i in range(200))
    cut = clean_prompt(long, 50)
    assert len(cut) <= 50 and long.endswith(cut) and cut.startswith("word")


def test_languages() -> None:
    assert len(LANGUAGES) == 99
    assert normalize_language("DE") == "de"
    assert normalize_language("german") == "de"
    assert normalize_language("jv") == "jw"  # Whisper spells Javanese jw
    assert normalize_language("") is None
    assert normalize_language(None) is None
    for bad in ("xx", "klingon", "en-US"):
        with pytest.raises(InvalidRequest) as caught:
            text_prefix(bad, None, True)
        assert caught.value.param == "language"
    with pytest.raises(ValueError):
        text_prefix("en", None, True, task="summarize")


# ---------------------------------------------------------------------------------------- parsing


def test_parse_timestamped_with_language() -> None:
    parsed = parse_transcript("<|en|><|transcribe|><|0.00|> Hello world.<|2.40|><|2.40|> Next one.<|5.00|>", 30.0, 30.0)
    assert parsed.language == "en"
    assert parsed.timestamped and parsed.incomplete is None
    assert [(s.id, s.start, s.end, s.text, s.seek) for s in parsed.segments] == [
        (0, 30.0, 32.4, " Hello world.", 3000),
        (1, 32.4, 35.0, " Next one.", 3000),
    ]
    assert parsed.segments[0].avg_logprob == 0.0 and parsed.segments[0].no_speech_prob == 0.0


def test_parse_without_timestamps_is_one_segment_over_the_window() -> None:
    parsed = parse_transcript("<|fr|><|transcribe|><|notimestamps|> Bonjour à tous.", 0.0, 12.5, first_id=4)
    assert parsed.language == "fr" and not parsed.timestamped
    assert parsed.segments == (Segment(4, 0.0, 12.5, " Bonjour à tous."),)


def test_parse_plain_text_from_a_gpu_model() -> None:
    parsed = parse_transcript("Plain text, no tokens at all.\n", 60.0, 15.0)
    assert parsed.language is None
    assert parsed.segments == (Segment(0, 60.0, 75.0, " Plain text, no tokens at all.", 6000),)
    assert parse_transcript("", 0.0, 30.0).segments == ()
    assert parse_transcript("<|nospeech|>", 0.0, 30.0).segments == ()


def test_parse_incomplete_trailing_segment() -> None:
    parsed = parse_transcript("<|0.00|> First.<|3.00|><|3.00|> Second.<|7.50|><|7.50|> Cut off in the mi", 0.0, 30.0)
    assert [s.text for s in parsed.segments] == [" First.", " Second."]
    assert parsed.incomplete == Segment(2, 7.5, 30.0, " Cut off in the mi")
    opened = parse_transcript("<|0.00|> Only.<|4.00|><|4.00|>", 0.0, 30.0)
    assert opened.incomplete is not None and opened.incomplete.start == 4.0 and opened.incomplete.text == ""


def test_parse_odd_shapes() -> None:
    # an echoed prefix and anything after <|endoftext|> are not the transcript
    echoed = "<|startofprev|> old<|startoftranscript|><|en|><|transcribe|><|0.00|> New.<|1.00|><|endoftext|> junk"
    assert [s.text for s in parse_transcript(echoed, 0.0, 30.0).segments] == [" New."]
    # unpaired timestamps: text after a closing timestamp starts there; times clamp to the window
    parsed = parse_transcript("<|0.00|> A.<|2.00|> B.<|40.00|>", 0.0, 30.0)
    assert [(s.start, s.end, s.text) for s in parsed.segments] == [(0.0, 2.0, " A."), (2.0, 30.0, " B.")]
    # an empty segment is dropped
    assert parse_transcript("<|0.00|><|30.00|>", 0.0, 30.0).segments == ()


# ---------------------------------------------------------------------------------------- windows


def test_windows_consecutive_and_short_tail_dropped() -> None:
    windows = Windows(np.zeros(round(60.05 * SAMPLE_RATE), np.float32))
    seen = []
    while (window := windows.window()) is not None:
        seen.append((window.index, window.offset, window.seconds, window.is_last))
        windows.advance()
    assert seen == [(0, 0.0, 30.0, False), (1, 30.0, 30.0, True)]
    assert Windows(np.zeros(800, np.float32)).window() is not None  # a short recording is still heard


def test_windows_seek() -> None:
    windows = Windows(np.zeros(75 * SAMPLE_RATE, np.float32))
    windows.advance(27.0)
    window = windows.window()
    assert window is not None and window.offset == 27.0 and window.seconds == 30.0
    windows.advance(0.0)  # no progress asked for: the whole window
    window = windows.window()
    assert window is not None and window.offset == 57.0 and window.seconds == 18.0 and window.is_last


# ---------------------------------------------------------------------------------------- driver


class FakeWhisper:
    """Canned TRANSCRIPTS, one per call; records the tensors it got."""

    def __init__(self, *outputs: Any) -> None:
        self.outputs = list(outputs)
        self.calls: list[dict[str, NDArray[Any]]] = []

    async def __call__(self, tensors: dict[str, NDArray[Any]]) -> Mapping[str, NDArray[Any]]:
        self.calls.append(tensors)
        return {"TRANSCRIPTS": np.array([[self.outputs.pop(0)]], dtype=object)}

    def prefixes(self) -> list[str]:
        return [call["TEXT_PREFIX"][0, 0].decode() for call in self.calls]


def noise(seconds: float) -> NDArray[np.float32]:
    return np.random.default_rng(0).uniform(-0.1, 0.1, round(seconds * SAMPLE_RATE)).astype(np.float32)


async def test_transcribe_75_seconds_seek_based() -> None:
    model = FakeWhisper(
        b"<|en|><|transcribe|><|0.00|> One.<|12.00|><|12.00|> Two.<|27.00|><|27.00|> Thr",
        "<|0.00|> Three.<|4.00|><|4.00|> Four.<|29.00|>",
        b"<|0.00|> Five.<|10.00|>",
    )
    samples = noise(75.0)
    run = transcribe(model, samples, TranscribeOptions(prompt="Numbers.", temperature=0.2, timestamps=True))
    assert run.language is None
    seen = []
    async for segment in run:
        seen.append(segment)
        assert run.language == "en"  # known once the first window is back
    assert [(s.id, s.start, s.end, s.text, s.seek) for s in seen] == [
        (0, 0.0, 12.0, " One.", 0),
        (1, 12.0, 27.0, " Two.", 0),
        (2, 27.0, 31.0, " Three.", 2700),
        (3, 31.0, 56.0, " Four.", 2700),
        (4, 57.0, 67.0, " Five.", 5700),
    ]
    starts = [s.start for s in seen]
    assert starts == sorted(starts) and all(s.end > s.start for s in seen)

    offsets = [0, 27 * SAMPLE_RATE, 57 * SAMPLE_RATE]
    lengths = [30 * SAMPLE_RATE, 30 * SAMPLE_RATE, 18 * SAMPLE_RATE]
    for call, offset, length in zip(model.calls, offsets, lengths, strict=True):
        assert call["WAV"].dtype == np.float32 and call["WAV"].shape == (1, length)
        np.testing.assert_array_equal(call["WAV"][0], samples[offset : offset + length])
        assert call["WAV_LENS"].dtype == np.int32 and call["WAV_LENS"].tolist() == [[length]]
        assert call["TEXT_PREFIX"].dtype == object and call["TEXT_PREFIX"].shape == (1, 1)
        assert call["TEMPERATURE"].dtype == np.float32 and call["TEMPERATURE"].shape == (1, 1)
        assert call["TEMPERATURE"][0, 0] == np.float32(0.2)
    assert model.prefixes() == [
        "<|startofprev|> Numbers.<|startoftranscript|><|transcribe|>",
        "<|startofprev|> One. Two.<|startoftranscript|><|en|><|transcribe|>",
        "<|startofprev|> Three. Four.<|startoftranscript|><|en|><|transcribe|>",
    ]
    result = await run.result()
    assert result.text == "One. Two. Three. Four. Five."
    assert result.language == "en" and result.duration == 75.0 and result.temperature == 0.2


async def test_transcribe_plain_text_windows_are_consecutive() -> None:
    model = FakeWhisper("first part", "second part", "third")
    result = await transcribe(model, noise(75.0), TranscribeOptions(language="de", timestamps=False)).result()
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 30.0), (30.0, 60.0), (60.0, 75.0)]
    assert result.text == "first part second part third"
    assert result.language == "de"
    assert all(p.endswith("<|de|><|transcribe|><|notimestamps|>") for p in model.prefixes())
    assert all("TEMPERATURE" not in call for call in model.calls)


async def test_transcribe_short_clip_skips_timestamps_by_default_and_keeps_the_open_segment() -> None:
    model = FakeWhisper(b"<|en|> Short clip.")
    result = await transcribe(model, noise(5.0), TranscribeOptions()).result()
    assert model.prefixes() == ["<|startoftranscript|><|transcribe|><|notimestamps|>"]
    assert result.segments == (Segment(0, 0.0, 5.0, " Short clip."),)
    # a last window that ends mid-segment keeps the segment, to the end of the audio
    model = FakeWhisper("<|0.00|> Done.<|2.00|><|2.00|> and then")
    result = await transcribe(model, noise(5.0), TranscribeOptions(timestamps=True)).result()
    assert [(s.start, s.end, s.text) for s in result.segments] == [(0.0, 2.0, " Done."), (2.0, 5.0, " and then")]


async def test_transcribe_high_temperature_drops_context_and_bad_output_is_an_upstream_error() -> None:
    model = FakeWhisper("<|0.00|> A.<|30.00|>", "<|0.00|> B.<|5.00|>")
    await transcribe(model, noise(35.0), TranscribeOptions(language="en", prompt="P", temperature=0.8)).result()
    assert model.prefixes() == [
        "<|startofprev|> P<|startoftranscript|><|en|><|transcribe|>",
        "<|startoftranscript|><|en|><|transcribe|>",
    ]
    assert transcript_text({"TRANSCRIPTS": np.array([b"x"], dtype=object)}) == "x"
    with pytest.raises(UpstreamError):
        transcript_text({})


async def test_transcribe_runs_once() -> None:
    run = transcribe(FakeWhisper("x"), noise(1.0), TranscribeOptions())
    await run.result()
    with pytest.raises(RuntimeError):
        run.__aiter__()


async def test_heard_is_the_end_of_the_last_window_the_model_answered() -> None:
    model = FakeWhisper("first part", "second part", "third")
    run = transcribe(model, noise(75.0), TranscribeOptions(timestamps=False))
    assert run.heard == 0.0
    segments = aiter(run)
    assert isinstance(segments, AsyncGenerator)
    await anext(segments)
    assert run.heard == 30.0
    await segments.aclose()  # the client left after the first window
    assert run.heard == 30.0 and len(model.calls) == 1

    async def fails_on_the_second_window(tensors: dict[str, NDArray[Any]]) -> Mapping[str, NDArray[Any]]:
        if model.calls:
            raise UpstreamError("boom")
        return await model(tensors)

    model = FakeWhisper("first part")
    run = transcribe(fails_on_the_second_window, noise(75.0), TranscribeOptions(timestamps=False))
    with pytest.raises(UpstreamError):
        await run.result()
    assert run.heard == 30.0

    run = transcribe(FakeWhisper("a", "b"), noise(30.05), TranscribeOptions())  # a tail too short to send
    await run.result()
    assert run.heard == run.duration == 30.05


async def test_a_translation_tells_the_model_the_spoken_language_and_is_in_english() -> None:
    model = FakeWhisper("<|fr|><|translate|><|0.00|> Hello.<|2.00|>", "<|0.00|> Again.<|3.00|>")
    run = transcribe(model, noise(35.0), TranscribeOptions(timestamps=True, task="translate"))
    result = await run.result()
    assert model.prefixes() == [
        "<|startoftranscript|><|translate|>",
        "<|startofprev|> Hello.<|startoftranscript|><|fr|><|translate|>",
    ]
    assert run.language == "fr" and result.language == "en" and result.text == "Hello. Again."
    body = render("verbose_json", result)
    assert isinstance(body, dict)
    assert (body["task"], body["language"]) == ("translate", "english")
    transcribed = await transcribe(
        FakeWhisper("<|fr|><|0.00|> Bonjour.<|2.00|>"), noise(2.0), TranscribeOptions()
    ).result()
    assert transcribed.language == "fr"


# ---------------------------------------------------------------------------------------- formats

SEGMENTS = (
    Segment(0, 0.0, 2.4, " Hello world.", 0),
    Segment(1, 3723.5, 3725.25, " An hour --> later.", 372350),
)
RESULT = Transcription("Hello world. An hour --> later.", SEGMENTS, "en", 3725.3, "transcribe", 0.0)


def test_format_validation() -> None:
    assert response_format(None) == "json"
    assert response_format("text", stream=True) == "text"
    with pytest.raises(InvalidRequest) as caught:
        response_format("xml")
    assert caught.value.param == "response_format"
    for fmt in ("verbose_json", "srt", "vtt"):
        with pytest.raises(InvalidRequest) as caught:
            response_format(fmt, stream=True)
        assert caught.value.param == "stream"
    timestamp_granularities(["segment"], "verbose_json")
    with pytest.raises(UnsupportedParameter):
        timestamp_granularities(["word"], "verbose_json")
    with pytest.raises(InvalidRequest):
        timestamp_granularities(["segment"], "json")


def test_timestamps() -> None:
    assert timestamp(0.0, ",") == "00:00:00,000"
    assert timestamp(2.4, ",") == "00:00:02,400"
    assert timestamp(3723.5, ".") == "01:02:03.500"
    assert timestamp(59.9996, ".") == "00:01:00.000"
    assert timestamp(100 * 3600 + 0.007, ",") == "100:00:00,007"


def test_render_json_and_text() -> None:
    assert render("json", RESULT) == {"text": RESULT.text, "usage": {"type": "duration", "seconds": 3726}}
    assert render("text", RESULT) == RESULT.text + "\n"
    assert usage(30.0000001) == {"type": "duration", "seconds": 30}


def test_render_verbose_json() -> None:
    body = render("verbose_json", RESULT)
    assert isinstance(body, dict)
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert body["duration"] == 3725.3 and body["text"] == RESULT.text
    first = body["segments"][0]
    assert set(first) == {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert (first["id"], first["seek"], first["start"], first["end"], first["text"]) == (
        0,
        0,
        0.0,
        2.4,
        " Hello world.",
    )
    assert first["tokens"] == [] and first["compression_ratio"] > 0
    assert "words" not in body
    assert render("verbose_json", Transcription("", (), None, 1.0))["language"] == "unknown"  # type: ignore[index]


def test_render_srt_and_vtt() -> None:
    assert render_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,400\nHello world.\n\n2\n01:02:03,500 --> 01:02:05,250\nAn hour -> later.\n\n"
    )
    assert render_vtt(SEGMENTS) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.400\nHello world.\n\n01:02:03.500 --> 01:02:05.250\nAn hour -> later.\n\n"
    )
    assert render("vtt", Transcription("", (), None, 0.0)) == "WEBVTT\n\n"


def test_stream_events_concatenate_to_the_text() -> None:
    stream = TextStream()
    events = [stream.delta(s) for s in SEGMENTS]
    assert events == [
        {"type": "transcript.text.delta", "delta": "Hello world."},
        {"type": "transcript.text.delta", "delta": " An hour --> later."},
    ]
    assert stream.delta(Segment(2, 0.0, 1.0, "")) is None
    assert stream.done(RESULT.duration) == {
        "type": "transcript.text.done",
        "text": RESULT.text,
        "usage": {"type": "duration", "seconds": 3726},
    }
