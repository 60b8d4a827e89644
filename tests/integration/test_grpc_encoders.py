"""The gRPC API's Embed, Rerank, Score and Transcribe in-process, over a fake Triton that answers the
encoder and Whisper tensor contracts with deterministic outputs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.api.context import KEYS, LIMITER, REGISTRY
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, ProjectConfig
from gateway.grpcapi.server import GrpcServer, server_options
from gateway.grpcapi.stubs import pb, pb_grpc
from gateway.text.tokenizer import Tokenizer
from perf.stack import free_port
from tests.integration.conftest import MODEL
from tests.integration.fake_encoder import (
    DIM,
    EMBEDDER,
    ENCODERS,
    MATRYOSHKA,
    MAX_BATCH,
    SCORER,
    WHISPER,
    FakeEncoders,
    gateway_models,
    sigmoid,
    unit,
    vector,
    wav,
)
from tests.integration.fake_engine import FakeEngine


@dataclass(frozen=True, slots=True)
class Gateway:
    rest: TestClient
    stub: pb_grpc.LLMGatewayStub


Serve = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def serve(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]],
    engine: FakeEngine,
    encoders: FakeEncoders,
    minilm: Tokenizer,
) -> AsyncIterator[Serve]:
    """Start the gateway over the fakes (config overrides as keywords): its REST client and gRPC stub."""
    channels: list[grpc.aio.Channel] = []

    async def start(**config: Any) -> Gateway:
        port = free_port()
        settings = GatewayConfig(grpc_port=port, models=gateway_models(), **config)
        rest = await aiohttp_client(create_app(settings, lambda url: encoders if url == ENCODERS else engine))
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        return Gateway(rest, pb_grpc.LLMGatewayStub(channels[-1]))

    yield start
    for channel in channels:
        await channel.close()


@pytest.fixture
async def gateway(serve: Serve) -> Gateway:
    return await serve()


@pytest.fixture
def stub(gateway: Gateway) -> pb_grpc.LLMGatewayStub:
    return gateway.stub


async def _fails(call: Awaitable[object], code: grpc.StatusCode, param: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    trailers = dict(err.value.trailing_metadata() or ())
    if param is not None:
        assert trailers["error-param"] == param, err.value.details()
    return err.value


async def _events(call: grpc.aio.UnaryStreamCall) -> list[pb.TranscribeEvent]:  # type: ignore[type-arg]
    return [event async for event in call]


# ------------------------------------------------------------------------------------------ Embed


async def test_embed_texts_in_order_across_batches(
    stub: pb_grpc.LLMGatewayStub, encoders: FakeEncoders, minilm: Tokenizer
) -> None:
    texts = [" ".join(["word"] * (1 + (i * 7) % 11)) + f" number {i}" for i in range(3 * MAX_BATCH - 3)]
    resp = await stub.Embed(pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=texts)))
    rows = [ids for ids, _ in minilm.encode_inputs(texts)]
    assert resp.id.startswith("embd-") and resp.model == EMBEDDER
    assert len(resp.embeddings) == len(texts)
    for row, embedding in zip(rows, resp.embeddings, strict=True):
        np.testing.assert_allclose(embedding.values, unit(vector(row)), rtol=1e-6)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == sum(len(r) for r in rows)
    assert resp.usage.completion_tokens == 0
    batches = [inputs["input_ids"].shape[0] for _, _, inputs in encoders.calls]
    assert sorted(batches) == [5, MAX_BATCH, MAX_BATCH]
    assert all(request_id.startswith(resp.id + "-") for _, request_id, _ in encoders.calls)


async def test_embed_token_ids_in_order(stub: pb_grpc.LLMGatewayStub, encoders: FakeEncoders) -> None:
    rows = [[101 + i, *range(2000, 2000 + (i * 5) % 13), 102] for i in range(MAX_BATCH * 2 + 1)]
    request = pb.EmbedRequest(model=EMBEDDER, token_ids=pb.TokenIdsList(token_ids=[pb.TokenIds(ids=r) for r in rows]))
    resp = await stub.Embed(request)
    got = np.array([e.values for e in resp.embeddings], np.float32)
    np.testing.assert_allclose(got, np.stack([unit(vector(r)) for r in rows]), rtol=1e-6)
    assert resp.usage.prompt_tokens == sum(len(r) for r in rows)
    sent = sorted(
        tuple(ids[mask == 1])
        for _, _, t in encoders.calls
        for ids, mask in zip(t["input_ids"], t["attention_mask"], strict=True)
    )
    assert sent == sorted(tuple(r) for r in rows)  # token ids go as they are


async def test_embed_dimensions(stub: pb_grpc.LLMGatewayStub) -> None:
    texts = pb.Texts(texts=["a short text", "another one"])
    err = await _fails(
        stub.Embed(pb.EmbedRequest(model=EMBEDDER, texts=texts, dimensions=2)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dimensions",
    )
    assert "Matryoshka" in (err.details() or "")
    assert dict(err.trailing_metadata() or ())["error-code"] == "unsupported_parameter"
    full = await stub.Embed(pb.EmbedRequest(model=EMBEDDER, texts=texts, dimensions=DIM))  # its own width: fine
    assert [len(e.values) for e in full.embeddings] == [DIM, DIM]
    cut = await stub.Embed(pb.EmbedRequest(model=MATRYOSHKA, texts=texts, dimensions=2))
    whole = await stub.Embed(pb.EmbedRequest(model=MATRYOSHKA, texts=texts))
    for short, long in zip(cut.embeddings, whole.embeddings, strict=True):
        np.testing.assert_allclose(short.values, unit(np.array(long.values[:2], np.float32)), rtol=1e-6)
    await _fails(
        stub.Embed(pb.EmbedRequest(model=MATRYOSHKA, texts=texts, dimensions=DIM + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "dimensions",
    )


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (pb.EmbedRequest(model=EMBEDDER), "input"),
        (pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts()), "input"),
        (pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=["x", ""])), "input"),
        (pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=["x"] * 2049)), "input"),
        (pb.EmbedRequest(model=EMBEDDER, token_ids=pb.TokenIdsList(token_ids=[pb.TokenIds()])), "input"),
        (pb.EmbedRequest(model=EMBEDDER, token_ids=pb.TokenIdsList(token_ids=[pb.TokenIds(ids=[10**7])])), "input"),
        (pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=["x"]), dimensions=0), "dimensions"),
        (
            pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=["x"]), truncate_prompt_tokens=0),
            "truncate_prompt_tokens",
        ),
        (pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=["word " * 600])), "input"),  # past the context
    ],
)
async def test_embed_invalid(stub: pb_grpc.LLMGatewayStub, request_: pb.EmbedRequest, param: str) -> None:
    await _fails(stub.Embed(request_), grpc.StatusCode.INVALID_ARGUMENT, param)


async def test_embed_truncates_when_asked(stub: pb_grpc.LLMGatewayStub, minilm: Tokenizer) -> None:
    resp = await stub.Embed(
        pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=["word " * 600]), truncate_prompt_tokens=16)
    )
    assert resp.usage.prompt_tokens == 16


# ---------------------------------------------------------------------------------- Rerank, Score

DOCUMENTS = ["one", "one two three four five", "one two", "one two three"]


async def test_rerank_sorted_with_top_n(stub: pb_grpc.LLMGatewayStub, minilm: Tokenizer) -> None:
    request = pb.RerankRequest(model=SCORER, query="which is longest?", documents=DOCUMENTS)
    resp = await stub.Rerank(request)
    assert resp.id.startswith("rerank-") and resp.model == SCORER
    assert [r.index for r in resp.results] == [1, 3, 2, 0]
    lengths = [len(ids) - 1 for ids, _ in minilm.encode_inputs(DOCUMENTS)]  # the document and its [SEP]
    assert [r.relevance_score for r in resp.results] == pytest.approx([sigmoid(lengths[r.index]) for r in resp.results])
    assert [r.document for r in resp.results] == [DOCUMENTS[r.index] for r in resp.results]  # by default, as REST
    pairs = minilm.encode_inputs([("which is longest?", d) for d in DOCUMENTS])
    assert resp.usage.prompt_tokens == sum(len(ids) for ids, _ in pairs)
    top = await stub.Rerank(
        pb.RerankRequest(model=SCORER, query="q", documents=DOCUMENTS, top_n=2, return_documents=False)
    )
    assert [r.index for r in top.results] == [1, 3]
    assert not any(r.HasField("document") for r in top.results)
    wide = await stub.Rerank(pb.RerankRequest(model=SCORER, query="q", documents=DOCUMENTS, top_n=10))
    assert len(wide.results) == len(DOCUMENTS)


async def test_rerank_by_embeddings(stub: pb_grpc.LLMGatewayStub) -> None:
    resp = await stub.Rerank(pb.RerankRequest(model=EMBEDDER, query="one two", documents=DOCUMENTS))
    scores = [r.relevance_score for r in resp.results]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    assert resp.results[0].index == 2  # the document identical to the query: cosine 1
    assert resp.results[0].relevance_score == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (pb.RerankRequest(model=SCORER, query="q"), "documents"),
        (pb.RerankRequest(model=SCORER, documents=["d"]), "query"),
        (pb.RerankRequest(model=SCORER, query="q", documents=["d"], top_n=0), "top_n"),
        (pb.RerankRequest(model=SCORER, query="q", documents=["d"] * 1001), "documents"),
    ],
)
async def test_rerank_invalid(stub: pb_grpc.LLMGatewayStub, request_: pb.RerankRequest, param: str) -> None:
    await _fails(stub.Rerank(request_), grpc.StatusCode.INVALID_ARGUMENT, param)


async def test_score_one_to_many_and_pairwise(stub: pb_grpc.LLMGatewayStub, minilm: Tokenizer) -> None:
    lengths = [len(ids) - 1 for ids, _ in minilm.encode_inputs(DOCUMENTS)]
    resp = await stub.Score(pb.ScoreRequest(model=SCORER, text_1=["query"], text_2=DOCUMENTS))
    assert resp.id.startswith("score-") and resp.model == SCORER
    assert list(resp.scores) == pytest.approx([sigmoid(n) for n in lengths])
    pairwise = await stub.Score(pb.ScoreRequest(model=SCORER, text_1=DOCUMENTS[::-1], text_2=DOCUMENTS))
    assert list(pairwise.scores) == list(resp.scores)  # the second text of each pair is scored
    assert pairwise.usage.prompt_tokens > resp.usage.prompt_tokens > 0
    await _fails(
        stub.Score(pb.ScoreRequest(model=SCORER, text_1=["a", "b"], text_2=DOCUMENTS)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text_1",
    )
    await _fails(stub.Score(pb.ScoreRequest(model=SCORER, text_1=["a"])), grpc.StatusCode.INVALID_ARGUMENT, "text_2")
    await _fails(stub.Score(pb.ScoreRequest(model=SCORER, text_2=["a"])), grpc.StatusCode.INVALID_ARGUMENT, "text_1")


# ------------------------------------------------------------------------------------- Transcribe


async def test_transcribe_streams_segments_then_the_whole(stub: pb_grpc.LLMGatewayStub, encoders: FakeEncoders) -> None:
    encoders.transcripts = [
        "<|en|><|transcribe|><|0.00|> One.<|10.00|><|10.00|> Two.<|30.00|>",
        "<|0.00|> Three.<|5.00|>",
    ]
    request = pb.TranscribeRequest(model=WHISPER, audio=wav(35.0), filename="a.wav", prompt="Numbers.", temperature=0.0)
    events = await _events(stub.Transcribe(request))
    segments = [e.segment for e in events[:-1]]
    assert all(e.WhichOneof("event") == "segment" for e in events[:-1])
    assert [(s.id, s.start, s.end, s.text) for s in segments] == [
        (0, 0.0, 10.0, " One."),
        (1, 10.0, 30.0, " Two."),
        (2, 30.0, 35.0, " Three."),
    ]
    done = events[-1].done
    assert events[-1].WhichOneof("event") == "done"
    assert done.text == "One. Two. Three." and done.language == "en"
    assert done.duration == pytest.approx(35.0) and done.usage.seconds == 35
    calls = [inputs for model, _, inputs in encoders.calls if model == WHISPER]
    assert len(calls) == 2 and "Numbers." in calls[0]["TEXT_PREFIX"][0, 0].decode()
    assert "TEMPERATURE" in calls[0] and "<|en|>" in calls[1]["TEXT_PREFIX"][0, 0].decode()


async def test_transcribe_short_clip(stub: pb_grpc.LLMGatewayStub, encoders: FakeEncoders) -> None:
    encoders.transcripts = ["<|fr|><|transcribe|><|notimestamps|> Bonjour."]
    events = await _events(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=wav(1.2))))
    assert [e.segment.text for e in events[:-1]] == [" Bonjour."]
    assert events[-1].done.text == "Bonjour." and events[-1].done.language == "fr"
    assert events[-1].done.usage.seconds == 2
    prefix = encoders.calls[0][2]["TEXT_PREFIX"][0, 0].decode()
    assert "<|notimestamps|>" in prefix and "TEMPERATURE" not in encoders.calls[0][2]
    encoders.transcripts = ["<|0.00|> Timed.<|1.00|>"]
    timed = await _events(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=wav(1.2), timestamps=True)))
    assert "<|notimestamps|>" not in encoders.calls[1][2]["TEXT_PREFIX"][0, 0].decode()
    assert [(e.segment.start, e.segment.end) for e in timed[:-1]] == [(0.0, 1.0)]


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (pb.TranscribeRequest(model=WHISPER), "audio"),
        (pb.TranscribeRequest(model=WHISPER, audio=b"not audio at all", filename="x.wav"), "file"),
        (pb.TranscribeRequest(model=WHISPER, audio=wav(0.5), temperature=1.5), "temperature"),
        (pb.TranscribeRequest(model=WHISPER, audio=wav(0.5), language="klingon"), "language"),
    ],
)
async def test_transcribe_invalid(stub: pb_grpc.LLMGatewayStub, request_: pb.TranscribeRequest, param: str) -> None:
    await _fails(_events(stub.Transcribe(request_)), grpc.StatusCode.INVALID_ARGUMENT, param)


async def test_transcribe_audio_limits(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], encoders: FakeEncoders, minilm: Tokenizer
) -> None:
    """The server's audio limits (the gateway config's, as REST's): bytes, then seconds."""
    client = await aiohttp_client(
        create_app(GatewayConfig(grpc_port=None, models=gateway_models()), lambda url: encoders)
    )
    app = client.app
    server = GrpcServer(
        app[REGISTRY], app[KEYS], app[LIMITER], "127.0.0.1", 0, max_audio_bytes=40_000, max_audio_seconds=0.5
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.LLMGatewayStub(channel)
            err = await _fails(
                _events(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=wav(2.0)))),
                grpc.StatusCode.INVALID_ARGUMENT,
                "audio",
            )
            assert dict(err.trailing_metadata() or ())["error-code"] == "request_too_large"
            await _fails(
                _events(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=wav(0.75)))),
                grpc.StatusCode.INVALID_ARGUMENT,
                "file",
            )
    finally:
        await server.stop(0)
    assert not encoders.calls


def test_receive_limit_follows_the_audio_limit() -> None:
    options = dict(server_options(100 * 1024 * 1024))
    assert options["grpc.max_receive_message_length"] > 100 * 1024 * 1024
    assert dict(server_options())["grpc.max_receive_message_length"] > GatewayConfig().max_audio_bytes


# -------------------------------------------------------------------------- models, keys, failures


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.Embed(pb.EmbedRequest(model=SCORER, texts=pb.Texts(texts=["x"]))),
        lambda s: s.Embed(pb.EmbedRequest(model=MODEL, texts=pb.Texts(texts=["x"]))),
        lambda s: s.Rerank(pb.RerankRequest(model=MODEL, query="q", documents=["d"])),
        lambda s: s.Score(pb.ScoreRequest(model=WHISPER, text_1=["q"], text_2=["d"])),
        lambda s: _events(s.Transcribe(pb.TranscribeRequest(model=EMBEDDER, audio=wav(0.5)))),
    ],
)
async def test_wrong_model_task(stub: pb_grpc.LLMGatewayStub, call: Callable[[Any], Awaitable[object]]) -> None:
    err = await _fails(call(stub), grpc.StatusCode.INVALID_ARGUMENT, "model")
    assert dict(err.trailing_metadata() or ())["error-code"] == "model_not_supported"


async def test_unknown_model(stub: pb_grpc.LLMGatewayStub) -> None:
    await _fails(
        stub.Embed(pb.EmbedRequest(model="nope", texts=pb.Texts(texts=["x"]))), grpc.StatusCode.NOT_FOUND, "model"
    )


async def test_keys(serve: Serve) -> None:
    key, record = new_key("team")
    stub = (await serve(projects=[ProjectConfig(id="team")], keys=[record])).stub
    request = pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=["x"]))
    await _fails(stub.Embed(request), grpc.StatusCode.UNAUTHENTICATED)
    await _fails(stub.Score(pb.ScoreRequest(model=SCORER, text_1=["a"], text_2=["b"])), grpc.StatusCode.UNAUTHENTICATED)
    await _fails(
        _events(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=wav(0.5)))), grpc.StatusCode.UNAUTHENTICATED
    )
    resp = await stub.Embed(request, metadata=(("authorization", f"Bearer {key}"),))
    assert len(resp.embeddings) == 1


async def test_upstream_failure_is_a_status(stub: pb_grpc.LLMGatewayStub, encoders: FakeEncoders) -> None:
    encoders.transcripts = []
    await _fails(
        _events(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=wav(0.5)))), grpc.StatusCode.INTERNAL
    )


# ------------------------------------------------------------------------------ the same as REST


async def test_same_answers_as_rest(gateway: Gateway, encoders: FakeEncoders) -> None:
    rest, stub = gateway.rest, gateway.stub
    texts = ["one", "two words", "three words here"]
    embedded = await (await rest.post("/v1/embeddings", json={"model": EMBEDDER, "input": texts})).json()
    embed = await stub.Embed(pb.EmbedRequest(model=EMBEDDER, texts=pb.Texts(texts=texts)))
    np.testing.assert_allclose(
        [e.values for e in embed.embeddings], [d["embedding"] for d in embedded["data"]], rtol=1e-6
    )
    assert embed.usage.prompt_tokens == embedded["usage"]["prompt_tokens"]

    body = {"model": SCORER, "query": "q", "documents": DOCUMENTS, "top_n": 3}
    reranked = await (await rest.post("/v1/rerank", json=body)).json()
    rerank = await stub.Rerank(pb.RerankRequest(model=SCORER, query="q", documents=DOCUMENTS, top_n=3))
    assert [(r.index, r.document) for r in rerank.results] == [
        (r["index"], r["document"]["text"]) for r in reranked["results"]
    ]
    assert [r.relevance_score for r in rerank.results] == pytest.approx(
        [r["relevance_score"] for r in reranked["results"]]
    )
    assert rerank.usage.prompt_tokens == reranked["usage"]["prompt_tokens"]

    scored = await (await rest.post("/v1/score", json={"model": SCORER, "text_1": "q", "text_2": DOCUMENTS})).json()
    score = await stub.Score(pb.ScoreRequest(model=SCORER, text_1=["q"], text_2=DOCUMENTS))
    assert list(score.scores) == pytest.approx([d["score"] for d in scored["data"]])

    audio = wav(1.0)
    transcript = "<|en|><|transcribe|><|0.00|> Hello.<|0.50|><|0.50|> World.<|1.00|>"
    encoders.transcripts = [transcript, transcript]
    form = aiohttp.FormData({"model": WHISPER, "response_format": "verbose_json"})
    form.add_field("file", audio, filename="a.wav", content_type="audio/wav")
    verbose = await (await rest.post("/v1/audio/transcriptions", data=form)).json()
    events = await _events(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=audio, timestamps=True)))
    assert [(e.segment.start, e.segment.end, e.segment.text) for e in events[:-1]] == [
        (s["start"], s["end"], s["text"]) for s in verbose["segments"]
    ]
    done = events[-1].done
    assert (done.text, done.usage.seconds) == (verbose["text"], verbose["usage"]["seconds"])
    assert done.duration == pytest.approx(verbose["duration"])

    wrong = await rest.post("/v1/embeddings", json={"model": SCORER, "input": "x"})
    err = await _fails(
        stub.Embed(pb.EmbedRequest(model=SCORER, texts=pb.Texts(texts=["x"]))), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert err.details() == (await wrong.json())["error"]["message"] and wrong.status == 400
