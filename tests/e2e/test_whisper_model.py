"""The Whisper model on speech made here by espeak-ng: through its runner, then through a real
tritonserver serving model_repository/whisper (WAV + TEXT_PREFIX -> TRANSCRIPTS)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile
import soxr
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.embedded.prepared import COMPLETE_MARKER
from gateway.embedded.tritonserver import TritonPorts, TritonServer
from gateway.embedded.whisper_features import SAMPLE_RATE
from gateway.embedded.whisper_prepare import is_prepared, prepare_whisper
from gateway.embedded.whisper_runner import Transcription, WhisperRunner
from perf.stack import free_port
from tests.conftest import MODEL_REPOSITORY

pytestmark = pytest.mark.e2e

SENTENCE = "The quick brown fox jumps over the lazy dog."
ENGLISH = "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>"
TIMESTAMPS = "<|startoftranscript|><|en|><|transcribe|>"
DETECT = "<|startoftranscript|><|transcribe|><|notimestamps|>"
SOT_ONLY = "<|startoftranscript|>"
TIMESTAMP = re.compile(r"<\|\d+\.\d\d\|>")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", TIMESTAMP.sub(" ", text).lower())


def heard(transcript: str, sentence: str = SENTENCE) -> float:
    """The share of the sentence's words found in the transcript."""
    said, got = words(sentence), set(words(transcript))
    return sum(w in got for w in said) / len(said)


@pytest.fixture(scope="module")
def weights() -> Path:
    return prepare_whisper(MODEL_REPOSITORY / "whisper" / "weights", lambda _: None)  # idempotent


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The sentence spoken by espeak-ng, as 16 kHz float32 samples."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng not found: install the Debian package espeak-ng (apt-get install -y espeak-ng)")
    wav = tmp_path_factory.mktemp("speech") / "fox.wav"
    subprocess.run([espeak, "-w", str(wav), SENTENCE], check=True, capture_output=True, timeout=60)
    samples, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    return np.asarray(soxr.resample(mono, rate, SAMPLE_RATE), dtype=np.float32)


@pytest.fixture(scope="module")
def runner(weights: Path) -> WhisperRunner:
    return WhisperRunner(weights)


def test_transcribes_the_sentence(runner: WhisperRunner, speech: np.ndarray) -> None:
    [text] = runner.transcribe_batch([Transcription(speech, ENGLISH)])
    assert heard(text) >= 0.7, text
    assert "<|" not in text  # the prefix chose everything: no special token comes back


def test_detects_english(runner: WhisperRunner, speech: np.ndarray) -> None:
    [text] = runner.transcribe_batch([Transcription(speech, DETECT)])
    assert text.startswith("<|en|>"), text
    assert heard(text) >= 0.7, text


def test_timestamps(runner: WhisperRunner, speech: np.ndarray) -> None:
    [text] = runner.transcribe_batch([Transcription(speech, TIMESTAMPS)])
    assert text.startswith("<|0.00|>"), text
    stamps = [float(s[2:-2]) for s in TIMESTAMP.findall(text)]
    assert len(stamps) >= 2 and stamps == sorted(stamps) and stamps[-1] <= 30.0, text
    assert heard(text) >= 0.7, text


def test_a_mixed_batch(runner: WhisperRunner, speech: np.ndarray) -> None:
    """Items that need different generate calls (prompt shapes, temperatures), answered in order."""
    previous = "<|startofprev|> A fox and a dog." + ENGLISH
    items = [
        Transcription(speech, ENGLISH),
        Transcription(speech, DETECT),
        Transcription(speech, previous),
        Transcription(speech[: SAMPLE_RATE // 2], ENGLISH, 0.5),
    ]
    texts = runner.transcribe_batch(items)
    assert len(texts) == 4
    assert heard(texts[0]) >= 0.7 and "<|" not in texts[0], texts[0]
    assert texts[1].startswith("<|en|>") and heard(texts[1]) >= 0.7, texts[1]
    assert heard(texts[2]) >= 0.7 and "<|" not in texts[2], texts[2]
    assert isinstance(texts[3], str)


def test_audio_past_30_seconds_or_not_finite_is_refused(runner: WhisperRunner) -> None:
    with pytest.raises(ValueError, match="480000 samples"):
        runner.check(Transcription(np.zeros(30 * SAMPLE_RATE + 1, dtype=np.float32), ENGLISH))
    with pytest.raises(ValueError, match="NaN"):
        runner.check(Transcription(np.full(10, np.nan, dtype=np.float32), ENGLISH))
    with pytest.raises(ValueError, match="TEMPERATURE"):
        runner.check(Transcription(np.zeros(10, dtype=np.float32), ENGLISH, -1.0))


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("<|en|><|transcribe|>", "once"),
        ("<|startoftranscript|><|nosuchtoken|>", "unknown special token"),
        ("<|startoftranscript|><|startoftranscript|>", "once"),
        (ENGLISH + " word" * 444, "448 tokens; at most 447"),  # no room left in the decoder's context
    ],
)
def test_a_bad_prefix_is_refused(runner: WhisperRunner, speech: np.ndarray, prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        runner.check(Transcription(speech, prefix))
    with pytest.raises(ValueError, match=message):  # before any work
        runner.transcribe_batch([Transcription(speech, ENGLISH), Transcription(speech, prefix)])


def test_a_checked_batch_is_transcribed_without_checking_again(runner: WhisperRunner, speech: np.ndarray) -> None:
    checked = [runner.check(Transcription(speech, prefix)) for prefix in (ENGLISH, DETECT)]
    assert checked[1].prompt.detect_language and not checked[0].prompt.detect_language
    texts = runner.transcribe_checked(checked)
    assert heard(texts[0]) >= 0.7 and texts[1].startswith("<|en|>"), texts
    assert runner.transcribe_checked([]) == []


# --- through tritonserver ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpcclient.InferenceServerClient]:
    cache = tmp_path_factory.mktemp("whisper-triton")
    server = TritonServer(
        MODEL_REPOSITORY, cache, TritonPorts(free_port(), free_port(), free_port()), models=("whisper",)
    )
    server.start()
    try:
        server.wait_ready(timeout=180)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield client
        client.close()
    finally:
        server.stop()


def infer(client: grpcclient.InferenceServerClient, samples: np.ndarray, prefix: str) -> str:
    wav = grpcclient.InferInput("WAV", [1, samples.size], "FP32")
    wav.set_data_from_numpy(samples.reshape(1, -1).astype(np.float32))
    lens = grpcclient.InferInput("WAV_LENS", [1, 1], "INT32")
    lens.set_data_from_numpy(np.array([[samples.size]], dtype=np.int32))
    text = grpcclient.InferInput("TEXT_PREFIX", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[prefix.encode()]], dtype=np.object_))
    result = client.infer("whisper", [wav, lens, text], outputs=[grpcclient.InferRequestedOutput("TRANSCRIPTS")])
    out = result.as_numpy("TRANSCRIPTS")
    assert out is not None and out.shape == (1, 1)
    return bytes(out[0, 0]).decode()


def test_triton_transcribes(triton: grpcclient.InferenceServerClient, speech: np.ndarray) -> None:
    text = infer(triton, speech, ENGLISH)
    assert heard(text) >= 0.7, text


def test_triton_answers_concurrent_requests(triton: grpcclient.InferenceServerClient, speech: np.ndarray) -> None:
    with ThreadPoolExecutor(2) as pool:
        texts = list(pool.map(lambda prefix: infer(triton, speech, prefix), [ENGLISH, DETECT]))
    assert heard(texts[0]) >= 0.7, texts[0]
    assert texts[1].startswith("<|en|>") and heard(texts[1]) >= 0.7, texts[1]


def test_triton_refuses_a_bad_request_alone(triton: grpcclient.InferenceServerClient, speech: np.ndarray) -> None:
    with ThreadPoolExecutor(2) as pool:
        bad = pool.submit(infer, triton, speech, "<|startoftranscript|><|nosuchtoken|>")
        good = pool.submit(infer, triton, speech, ENGLISH)
        with pytest.raises(InferenceServerException, match="nosuchtoken") as refused:
            bad.result()
        assert heard(good.result()) >= 0.7
    # the client's error, not the server's: the gateway neither retries it elsewhere nor ejects the server
    assert refused.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT), refused.value.status()


def test_prefix_parsing_and_output_text(runner: WhisperRunner) -> None:
    vocab = runner.vocabulary
    prompt = vocab.prompt("<|startofprev|> earlier words" + ENGLISH)
    assert prompt.ids[0] == vocab.sot_prev and prompt.ids[prompt.sot] == vocab.sot
    assert not prompt.detect_language and vocab.text(prompt.ids) == "<|startofprev|> earlier words" + ENGLISH
    assert vocab.prompt(DETECT).detect_language and vocab.prompt("<|startoftranscript|>").detect_language
    long = vocab.prompt("<|startofprev|>" + " word" * 400 + ENGLISH)  # earlier text: the latest 223 tokens
    assert long.sot == 224 and len(long.ids) == 228
    assert vocab.text([vocab.ids["<|0.00|>"], *vocab.prompt(" Hi." + SOT_ONLY).ids[:2], vocab.eot]) == "<|0.00|> Hi."


def test_prepare_is_idempotent_and_rebuilds_a_stale_directory(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    notes: list[str] = []
    assert prepare_whisper(out, notes.append) == out
    assert is_prepared(out) and (out / "model.bin").stat().st_size > 100 << 20
    assert any("MiB" in n for n in notes)
    notes.clear()
    prepare_whisper(out, notes.append)
    assert notes == [f"whisper ready in {out}"]
    (out / COMPLETE_MARKER).write_text("an older format\n")
    assert not is_prepared(out)
    prepare_whisper(out, notes.append)
    assert is_prepared(out) and [p.name for p in tmp_path.iterdir()] == ["weights"]  # no temporary left
