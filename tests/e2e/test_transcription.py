"""Audio transcription against the real stack: speech made here by espeak-ng, decoded by the gateway,
transcribed by Whisper base (CTranslate2) in the embedded Triton, read by the official openai SDK."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

WHISPER = "whisper-base"
SENTENCE = "The quick brown fox jumps over the lazy dog. Then it runs into the forest."
SECOND = "Seven red apples are lying on the kitchen table."


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def heard(expected: str, text: str) -> float:
    """The share of the expected words that are in the transcript."""
    want = words(expected)
    return len(want & words(text)) / len(want)


def speak(text: str, path: Path) -> Path:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng is missing: `make test` installs it (apt-get install espeak-ng)"
    subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SENTENCE, tmp_path_factory.mktemp("audio") / "fox.wav")


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=300)


def test_the_sdk_transcribes_speech(sdk: openai.OpenAI, speech: Path) -> None:
    with speech.open("rb") as f:
        result = sdk.audio.transcriptions.create(model=WHISPER, file=f)
    assert heard(SENTENCE, result.text) >= 0.7, result.text


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_formats_decode(sdk: openai.OpenAI, speech: Path, fmt: str) -> None:
    samples, rate = soundfile.read(speech, dtype="float32")
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt)
    result = sdk.audio.transcriptions.create(
        model=WHISPER, file=(f"speech.{fmt.lower()}", buffer.getvalue()), language="en"
    )
    assert heard(SENTENCE, result.text) >= 0.7, result.text


def test_verbose_json_has_timed_segments_and_the_language(sdk: openai.OpenAI, speech: Path) -> None:
    with speech.open("rb") as f:
        result = sdk.audio.transcriptions.create(model=WHISPER, file=f, response_format="verbose_json")
    assert result.language == "english"  # detected: no language was given
    assert result.duration == pytest.approx(soundfile.info(speech).duration, abs=0.05)
    assert result.segments
    ends = [s.end for s in result.segments]
    assert all(0 <= s.start < s.end <= result.duration + 0.5 for s in result.segments)
    assert ends == sorted(ends)
    assert heard(SENTENCE, " ".join(s.text for s in result.segments)) >= 0.7


def test_subtitle_and_text_formats(stack: Stack, speech: Path) -> None:
    data = speech.read_bytes()
    for fmt, pattern in (
        ("srt", r"^1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S"),
        ("vtt", r"^WEBVTT\n\n00:00:\d\d\.\d{3} --> 00:00:\d\d\.\d{3}\n\S"),
        ("text", r"^[A-Z].*\n$"),
    ):
        resp = httpx.post(
            stack.v1 + "/audio/transcriptions",
            data={"model": WHISPER, "response_format": fmt},
            files={"file": ("fox.wav", data)},
            timeout=300,
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/plain")
        assert re.match(pattern, resp.text), (fmt, resp.text)


def test_streamed_deltas_add_up_to_the_text(sdk: openai.OpenAI, speech: Path) -> None:
    with speech.open("rb") as f:
        events = list(sdk.audio.transcriptions.create(model=WHISPER, file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas and len(done) == 1
    assert "".join(deltas) == done[0].text
    assert heard(SENTENCE, done[0].text) >= 0.7


def test_long_audio_goes_in_windows(sdk: openai.OpenAI, speech: Path, tmp_path: Path) -> None:
    first, rate = soundfile.read(speech, dtype="float32")
    second, rate2 = soundfile.read(speak(SECOND, tmp_path / "apples.wav"), dtype="float32")
    assert rate == rate2
    silence = np.zeros(int(rate * 28), dtype=np.float32)
    long = np.concatenate([first, silence, second])  # ~40 s: the second sentence is past the first window
    buffer = io.BytesIO()
    soundfile.write(buffer, long, rate, format="WAV")
    result = sdk.audio.transcriptions.create(
        model=WHISPER, file=("long.wav", buffer.getvalue()), response_format="verbose_json", language="en"
    )
    assert result.duration > 30
    assert heard(SENTENCE, result.text) >= 0.7, result.text
    assert heard(SECOND, result.text) >= 0.5, result.text  # espeak's voice: "seven red" came out "salmon r"
    late = [s for s in result.segments if heard(SECOND, s.text) >= 0.5]
    assert late and late[0].start > 25, result.segments  # timed from the start of the recording


@pytest.mark.parametrize(
    ("data", "files", "param"),
    [
        ({"model": WHISPER}, {"file": ("x.wav", b"not audio at all")}, "file"),
        ({"model": WHISPER}, {"file": ("x.m4a", b"\x00\x00\x00\x18ftypM4A ")}, "file"),
        ({"model": WHISPER}, None, "file"),
        ({}, {"file": ("x.wav", b"RIFF")}, "model"),
        ({"model": WHISPER, "language": "klingon"}, "speech", "language"),
        ({"model": WHISPER, "response_format": "xml"}, "speech", "response_format"),
        ({"model": WHISPER, "response_format": "srt", "stream": "true"}, "speech", "stream"),
        ({"model": WHISPER, "temperature": "hot"}, "speech", "temperature"),
        ({"model": WHISPER, "temperature": "1.5"}, "speech", "temperature"),
        ({"model": WHISPER, "colour": "blue"}, "speech", "colour"),
        ({"model": "smollm2-135m-instruct"}, "speech", "model"),
    ],
)
def test_bad_uploads_get_a_400_naming_the_parameter(
    stack: Stack, speech: Path, data: dict[str, str], files: object, param: str
) -> None:
    upload = {"file": ("fox.wav", speech.read_bytes())} if files == "speech" else files
    if upload is None:  # a form without a file
        upload = {"prompt": (None, b"hello")}
    resp = httpx.post(stack.v1 + "/audio/transcriptions", data=data, files=upload, timeout=300)  # type: ignore[arg-type]
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param, resp.json()


def test_not_multipart_is_a_415(stack: Stack) -> None:
    resp = httpx.post(stack.v1 + "/audio/transcriptions", json={"model": WHISPER}, timeout=30)
    assert resp.status_code == 415
