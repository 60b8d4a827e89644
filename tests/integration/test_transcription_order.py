"""The order of a transcription request's work (gateway/core/transcription.py), over the fake Triton of
:mod:`tests.integration.fake_encoder`: options checked, then the caller's limits, then the decoding, so
a refused request decodes nothing; the limits given back when the file does not decode; and the audio
seconds counted as what the model heard, not the whole recording."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.app import create_app
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, KeyConfig, LimitsConfig, ProjectConfig
from gateway.core import transcription
from tests.integration.fake_encoder import ENCODERS, WHISPER, FakeEncoders, gateway_models, wav
from tests.integration.fake_engine import FakeEngine

KEY, RECORD = new_key("team", "full")
AUTH = {"Authorization": f"Bearer {KEY}"}
TRANSCRIPT = "<|en|><|transcribe|><|0.00|> Hello.<|1.00|>"

Serve = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def encoders() -> FakeEncoders:
    return FakeEncoders()


@pytest.fixture
def serve(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine, encoders: FakeEncoders
) -> Serve:
    async def start(**config: Any) -> TestClient:
        settings = GatewayConfig(grpc_port=None, models=gateway_models(), **config)
        return await aiohttp_client(create_app(settings, lambda url: encoders if url == ENCODERS else engine))

    return start


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The files the gateway decoded, in order."""
    seen: list[bytes] = []
    decode = transcription.decode_audio_async

    async def counted(data: bytes, *args: Any, **kwargs: Any) -> NDArray[np.float32]:
        seen.append(data)
        return await decode(data, *args, **kwargs)

    monkeypatch.setattr(transcription, "decode_audio_async", counted)
    return seen


def limited(limits: LimitsConfig) -> KeyConfig:
    return RECORD.model_copy(update={"limits": limits})


def audio_form(audio: bytes | None = None, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData({"model": WHISPER, **fields})
    form.add_field("file", wav(1.0) if audio is None else audio, filename="a.wav", content_type="audio/wav")
    return form


async def post(client: TestClient, status: int, form: aiohttp.FormData) -> dict[str, Any]:
    resp = await client.post("/v1/audio/transcriptions", data=form, headers=AUTH)
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    return body


async def test_a_request_the_limits_refuse_decodes_nothing(
    serve: Serve, encoders: FakeEncoders, decodes: list[bytes]
) -> None:
    client = await serve(projects=[ProjectConfig(id="team")], keys=[limited(LimitsConfig(requests_per_minute=1))])
    encoders.transcripts = [TRANSCRIPT]
    await post(client, 200, audio_form())
    error = (await post(client, 429, audio_form()))["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert len(decodes) == 1 and len(encoders.calls) == 1


async def test_an_unknown_language_is_refused_before_the_limits_and_the_decoding(
    serve: Serve, encoders: FakeEncoders, decodes: list[bytes]
) -> None:
    client = await serve(projects=[ProjectConfig(id="team")], keys=[limited(LimitsConfig(requests_per_minute=1))])
    error = (await post(client, 400, audio_form(language="klingon")))["error"]
    assert error["param"] == "language"
    assert decodes == []
    encoders.transcripts = [TRANSCRIPT]
    await post(client, 200, audio_form(language="English"))  # the minute's one request was not spent
    assert len(decodes) == 1


async def test_a_file_that_does_not_decode_gives_the_limits_back(
    serve: Serve, encoders: FakeEncoders, decodes: list[bytes]
) -> None:
    client = await serve(projects=[ProjectConfig(id="team", limits=LimitsConfig(max_concurrent=1))], keys=[RECORD])
    error = (await post(client, 400, audio_form(b"not audio at all" * 20)))["error"]
    assert error["param"] == "file"
    encoders.transcripts = [TRANSCRIPT]
    await post(client, 200, audio_form())  # the concurrency slot came back
    assert len(decodes) == 2 and len(encoders.calls) == 1


async def heard_seconds(client: TestClient) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_audio_seconds_total" and sample.labels == {
                "model": WHISPER,
                "project": "default",
            }:
                return float(sample.value)
    return 0.0


async def test_audio_seconds_count_what_the_model_heard(serve: Serve, encoders: FakeEncoders) -> None:
    client = await serve()
    before = await heard_seconds(client)
    encoders.transcripts = ["<|en|><|transcribe|><|0.00|> One.<|30.00|>"]  # then no answer: 502
    await post(client, 502, audio_form(wav(65.0)))
    assert await heard_seconds(client) - before == pytest.approx(30.0)  # one window of 65 s

    encoders.transcripts = [TRANSCRIPT]
    await post(client, 400, audio_form(b"junk" * 50))  # nothing decoded, nothing heard
    await post(client, 200, audio_form(wav(2.5)))
    assert await heard_seconds(client) - before == pytest.approx(32.5)
