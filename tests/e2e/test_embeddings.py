"""Embeddings, rerank, score, tokenize and /v1/models against the real stack: all-MiniLM-L6-v2 (int8
ONNX) served by the embedded Triton, reached by the official openai SDK, LangChain and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from tests.conftest import REPO
from tests.e2e.conftest import MODEL, Stack

pytestmark = pytest.mark.e2e

EMBED = "all-minilm-l6-v2"
PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply today."
MINILM_WEIGHTS = REPO / "model_repository" / "minilm" / "weights"


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=120)


def post(stack: Stack, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(stack.base_url + path, json=body, timeout=120)


def vectors(sdk: openai.OpenAI, texts: list[str], **kwargs: Any) -> np.ndarray:
    resp = sdk.embeddings.create(model=EMBED, input=texts, **kwargs)
    return np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)


def test_the_known_pair_scores_as_sbert_does(sdk: openai.OpenAI) -> None:
    a, b, c = vectors(sdk, [*PAIR, UNRELATED], encoding_format="float")
    assert a.shape == (384,)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-4)
    assert float(a @ b) == pytest.approx(0.75, abs=0.04)  # 0.753 with onnxruntime on the same model
    assert float(a @ c) < 0.3


def test_float_and_base64_agree_and_usage_is_exact(sdk: openai.OpenAI, stack: Stack) -> None:
    as_float = vectors(sdk, list(PAIR), encoding_format="float")
    as_base64 = vectors(sdk, list(PAIR))  # unasked, the SDK asks for base64 and decodes it itself
    np.testing.assert_allclose(as_float, as_base64, atol=1e-6)
    strings = sdk.embeddings.create(model=EMBED, input=list(PAIR), encoding_format="base64").data
    assert isinstance(strings[1].embedding, str)
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(strings[1].embedding), "<f4"), as_float[1], atol=1e-6)
    raw = post(stack, "/v1/embeddings", {"model": EMBED, "input": PAIR[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, as_float[0], atol=1e-6)
    tokens = post(stack, "/tokenize", {"model": EMBED, "prompt": PAIR[0]}).json()["count"]
    assert raw["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert tokens == 8  # [CLS] a man is eating food . [SEP]


def test_many_inputs_are_batched_in_order(sdk: openai.OpenAI) -> None:
    texts = [f"Sentence number {i} is about {'cats' if i % 3 else 'the weather in spring'}." for i in range(300)]
    texts[7] = "A much longer sentence, " * 20
    many = vectors(sdk, texts)  # more than the model's max_batch_size (256): split, sent at once, merged
    for i in (0, 7, 150, 299):
        alone = vectors(sdk, [texts[i]])[0]
        np.testing.assert_allclose(many[i], alone, atol=2e-3)  # int8 activations: padding moves the last bits


def test_token_id_inputs_match_text_inputs(sdk: openai.OpenAI, stack: Stack) -> None:
    ids = post(stack, "/tokenize", {"model": EMBED, "prompt": PAIR[0]}).json()["tokens"]
    by_text = vectors(sdk, [PAIR[0]])[0]
    by_ids = sdk.embeddings.create(model=EMBED, input=[ids], encoding_format="float").data[0].embedding
    np.testing.assert_allclose(np.array(by_ids, dtype=np.float32), by_text, atol=1e-5)


def test_langchain_embeddings_round_trip(stack: Stack) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: the client's own tiktoken chunking is for OpenAI's models
    emb = OpenAIEmbeddings(
        model=EMBED,
        base_url=stack.v1,
        api_key="unused",
        check_embedding_ctx_length=False,  # type: ignore[arg-type]
    )
    docs = emb.embed_documents(list(PAIR))
    query = emb.embed_query(PAIR[0])
    assert len(docs) == 2 and len(docs[0]) == 384
    np.testing.assert_allclose(np.array(query), np.array(docs[0]), atol=1e-5)
    assert float(np.dot(docs[0], docs[1])) == pytest.approx(0.75, abs=0.04)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": [[1, 2], []]}, "input"),
        ({"input": [1, "a"]}, "input"),
        ({"input": {"text": "a"}}, "input"),
        ({"input": [[10**9]]}, "input"),
        ({"input": "ok", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "ok", "dimensions": 128}, "dimensions"),
        ({"input": "ok", "dimensions": 0}, "dimensions"),
        ({"input": "word " * 600}, "input"),
        ({"input": "ok", "temperature": 1}, "temperature"),
    ],
)
def test_bad_embedding_requests_get_a_400_naming_the_parameter(stack: Stack, body: dict[str, Any], param: str) -> None:
    resp = post(stack, "/v1/embeddings", {"model": EMBED, **body})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_too_long_input_names_its_index_or_is_truncated(stack: Stack) -> None:
    long = "word " * 600
    resp = post(stack, "/v1/embeddings", {"model": EMBED, "input": ["short", long]})
    assert resp.status_code == 400
    assert "input[1]" in resp.json()["error"]["message"]
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    cut = post(stack, "/v1/embeddings", {"model": EMBED, "input": ["short", long], "truncate_prompt_tokens": 64})
    assert cut.status_code == 200, cut.text
    assert cut.json()["usage"]["prompt_tokens"] == 3 + 64


def test_each_model_refuses_the_other_apis(stack: Stack) -> None:
    chat = post(stack, "/v1/chat/completions", {"model": EMBED, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400
    assert chat.json()["error"]["code"] == "model_not_supported"
    assert "/v1/embeddings" in chat.json()["error"]["message"]
    emb = post(stack, "/v1/embeddings", {"model": MODEL, "input": "hi"})
    assert emb.status_code == 400
    assert emb.json()["error"]["code"] == "model_not_supported"
    unknown = post(stack, "/v1/embeddings", {"model": "nope", "input": "hi"})
    assert unknown.status_code == 404


def test_models_say_what_they_serve(stack: Stack) -> None:
    cards = {m["id"]: m for m in httpx.get(stack.v1 + "/models").json()["data"]}
    assert cards[EMBED]["task"] == "embedding"
    assert "embeddings" in cards[EMBED]["capabilities"] and "rerank" in cards[EMBED]["capabilities"]
    assert cards[EMBED]["rerank_method"] == "embedding-cosine"
    assert cards[EMBED]["max_model_len"] == 256
    assert cards[MODEL]["task"] == "chat"
    assert cards[MODEL]["max_model_len"] == 8192
    assert cards["whisper-base"]["task"] == "transcription"


def test_rerank_puts_the_obvious_answer_first(stack: Stack) -> None:
    documents = [
        "Paris is the capital and largest city of France.",
        "Bananas are a good source of potassium.",
        {"text": "The Eiffel Tower is in Paris."},
        "Python is a programming language.",
    ]
    resp = post(
        stack,
        "/v1/rerank",
        {"model": EMBED, "query": "What is the capital of France?", "documents": documents, "top_n": 3},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    results = body["results"]
    assert [r["index"] for r in results][:1] == [0]
    assert len(results) == 3
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert results[0]["document"] == {"text": documents[0]}
    assert body["usage"]["total_tokens"] > 0
    plain = post(
        stack, "/rerank", {"model": EMBED, "query": "fruit", "documents": documents, "return_documents": False}
    )
    assert plain.json()["results"][0]["index"] == 1
    assert "document" not in plain.json()["results"][0]


def test_score_pairs_one_to_many(stack: Stack) -> None:
    resp = post(stack, "/v1/score", {"model": EMBED, "text_1": PAIR[0], "text_2": [PAIR[1], UNRELATED]})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert data[0]["score"] == pytest.approx(0.75, abs=0.04)
    assert data[1]["score"] < data[0]["score"]
    bad = post(stack, "/v1/score", {"model": EMBED, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]})
    assert bad.status_code == 400


def test_rest_tokenize_matches_the_chat_prompt_tokens(sdk: openai.OpenAI, stack: Stack) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    resp = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert resp.usage is not None
    for path in ("/tokenize", "/v1/tokenize"):
        tok = post(stack, path, {"model": MODEL, "messages": messages}).json()
        assert tok["count"] == resp.usage.prompt_tokens == len(tok["tokens"])
        assert tok["max_model_len"] == 8192
    text = post(stack, "/detokenize", {"model": MODEL, "tokens": tok["tokens"]}).json()["prompt"]
    assert "What is the capital of France?" in text
    strs = post(stack, "/tokenize", {"model": MODEL, "prompt": "Hello world", "return_token_strs": True}).json()
    assert strs["count"] == len(strs["token_strs"]) == 2
    both = post(stack, "/tokenize", {"model": MODEL, "prompt": "x", "messages": messages})
    assert both.status_code == 400
    assert post(stack, "/detokenize", {"model": MODEL, "tokens": [10**9]}).status_code == 400


async def test_dimensions_on_a_matryoshka_model_declared_in_config(
    stack: Stack, aiohttp_server: Callable[[web.Application], Awaitable[TestServer]]
) -> None:
    """A config file can declare any number of models of each kind on any Triton: here the same Triton
    model under a second id, declared Matryoshka, so `dimensions` truncates and re-normalises."""
    config = GatewayConfig(
        grpc_port=None,
        models=[
            ModelConfig(
                id="minilm-mrl",
                task="embed",
                matryoshka=True,
                max_batch=4,
                triton_url=f"127.0.0.1:{stack.triton_grpc_port}",
                triton_model="minilm",
                tokenizer_dir=MINILM_WEIGHTS,
            )
        ],
    )
    server = await aiohttp_server(create_app(config))
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0)
    full = await client.embeddings.create(model="minilm-mrl", input=list(PAIR) * 5, encoding_format="float")
    short = await client.embeddings.create(
        model="minilm-mrl", input=list(PAIR) * 5, dimensions=64, encoding_format="float"
    )
    assert [d.index for d in short.data] == list(range(10))
    head = np.array(full.data[3].embedding[:64], dtype=np.float32)
    got = np.array(short.data[3].embedding, dtype=np.float32)
    assert got.shape == (64,)
    np.testing.assert_allclose(got, head / np.linalg.norm(head), atol=1e-5)
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="minilm-mrl", input="x", dimensions=385)
    await client.close()


async def test_concurrent_requests_share_the_model(sdk: openai.OpenAI, stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=120)
    texts = [f"request {i}: " + "words " * (i % 20) for i in range(24)]
    results = await asyncio.gather(
        *(client.embeddings.create(model=EMBED, input=t, encoding_format="float") for t in texts)
    )
    await client.close()
    for text, result in zip(texts[:3], results[:3], strict=True):
        alone = vectors(sdk, [text])[0]
        np.testing.assert_allclose(np.array(result.data[0].embedding, dtype=np.float32), alone, atol=2e-3)
