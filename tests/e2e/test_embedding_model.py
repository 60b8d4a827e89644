"""The embedding model through a real tritonserver: model_repository/minilm (all-MiniLM-L6-v2) and, from
the same model file with task score, the random-weights contract cross-encoder."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.protobuf import text_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from gateway.embedded.encoder import Encoder, FloatArray, Rows
from gateway.embedded.minilm_prepare import prepare_minilm
from gateway.embedded.tritonserver import TritonPorts, TritonServer
from perf.stack import free_port
from tests.conftest import MODEL_REPOSITORY
from tests.toy_cross_encoder import build_cross_encoder

pytestmark = pytest.mark.e2e

MINILM = MODEL_REPOSITORY / "minilm"
SCORE_MODEL = "toy_score"
PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply today."
TEXTS = [" ".join(["word"] * n) + f" number {n}." for n in range(1, 80, 5)]  # 16 lengths


@pytest.fixture(scope="module")
def weights() -> Path:
    return prepare_minilm(MINILM / "weights", lambda _: None)  # idempotent


@pytest.fixture(scope="module")
def tokenizer(weights: Path) -> Tokenizer:
    return Tokenizer.from_file(str(weights / "tokenizer.json"))


def write_model(repo: Path, name: str, weights: Path, task: str) -> None:
    """model_repository/minilm's config and model file as model ``name`` of ``repo``, over ``weights``."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse((MINILM / "config.pbtxt").read_text(), config)
    config.name = name
    config.parameters["weights_dir"].string_value = str(weights)
    config.parameters["task"].string_value = task
    if task == "score":
        del config.output[:]
        config.output.add(name="logits", data_type=model_config_pb2.TYPE_FP32, dims=[1])
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    shutil.copyfile(MINILM / "1" / "model.py", repo / name / "1" / "model.py")


@pytest.fixture(scope="module")
def toy_weights(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("toy") / "weights", weights)


@pytest.fixture(scope="module")
def triton(weights: Path, toy_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    tmp = tmp_path_factory.mktemp("embedding-triton")
    write_model(tmp / "repo", "minilm", weights, "embed")
    write_model(tmp / "repo", SCORE_MODEL, toy_weights, "score")
    ports = TritonPorts(free_port(), free_port(), free_port())
    server = TritonServer(tmp / "repo", tmp / "cache", ports, models=("minilm", SCORE_MODEL))
    server.start()
    try:
        server.wait_ready(timeout=120)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(triton: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    client.close()


def encode(tokenizer: Tokenizer, texts: list[str] | list[tuple[str, str]]) -> Rows:
    """One request's rows, padded to the longest (mask 0), as the gateway sends them."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
    longest = max(len(e.ids) for e in encodings)
    arrays = [np.zeros((len(encodings), longest), dtype=np.int64) for _ in range(3)]
    for row, e in enumerate(encodings):
        for array, values in zip(arrays, (e.ids, e.attention_mask, e.type_ids), strict=True):
            array[row, : len(values)] = values
    return arrays[0], arrays[1], arrays[2]


def inputs(rows: Rows, infer_input: type[Any] = grpcclient.InferInput) -> list[Any]:
    """The request's three tensors (``infer_input``: the sync or the asyncio client's InferInput)."""
    made = []
    for name, array in zip(("input_ids", "attention_mask", "token_type_ids"), rows, strict=True):
        tensor = infer_input(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        made.append(tensor)
    return made


def embed(client: grpcclient.InferenceServerClient, rows: Rows) -> FloatArray:
    result = client.infer("minilm", inputs(rows))
    out: FloatArray | None = result.as_numpy("embeddings")
    assert out is not None and out.dtype == np.float32
    return out


def test_sbert_pair_is_similar_and_unrelated_sentence_is_not(
    client: grpcclient.InferenceServerClient, tokenizer: Tokenizer
) -> None:
    out = embed(client, encode(tokenizer, [*PAIR, UNRELATED]))
    assert out.shape == (3, 384)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    related, unrelated = float(out[0] @ out[1]), float(out[0] @ out[2])
    assert 0.70 <= related <= 0.80, related
    assert unrelated < related - 0.4, unrelated


async def test_concurrent_requests_of_different_lengths_share_batches(
    triton: TritonServer, client: grpcclient.InferenceServerClient, tokenizer: Tokenizer
) -> None:
    requests = [encode(tokenizer, [text]) for text in TEXTS]
    assert len({r[0].shape[1] for r in requests}) == len(TEXTS)
    solo = [embed(client, rows) for rows in requests]
    before = executions(client, "minilm")
    aio = aioclient.InferenceServerClient(triton.grpc_url)
    try:
        results = await asyncio.gather(*(aio.infer("minilm", inputs(rows, aioclient.InferInput)) for rows in requests))
    finally:
        await aio.close()
    runs, rows_run = (after - prior for after, prior in zip(executions(client, "minilm"), before, strict=True))
    for alone, result in zip(solo, results, strict=True):
        together = result.as_numpy("embeddings")
        assert together is not None and together.shape == (1, 384)
        np.testing.assert_allclose(together, alone, atol=1e-5)
    assert rows_run == len(TEXTS)
    assert runs < len(TEXTS), "no two requests shared an execute() call"


def executions(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(execute() calls, rows inferred) of ``model`` so far, once settled: Triton counts a call just
    after its responses go out, so a read right after a response may miss that call."""

    def read() -> tuple[int, int]:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0))

    last = read()
    for _ in range(100):
        time.sleep(0.05)
        now = read()
        if now == last:
            return now
        last = now
    pytest.fail(f"{model}'s statistics did not settle")


async def test_a_bad_request_fails_alone_as_invalid_argument(triton: TritonServer, tokenizer: Tokenizer) -> None:
    good = encode(tokenizer, [PAIR[0]])
    bad = (good[0], good[1][:, :-1], good[2][:, :-1])  # attention_mask one token short
    out_of_vocab = (np.full_like(good[0], 10**6), good[1], good[2])
    aio = aioclient.InferenceServerClient(triton.grpc_url)
    try:
        results = await asyncio.gather(
            *(aio.infer("minilm", inputs(rows, aioclient.InferInput)) for rows in (bad, good, out_of_vocab, good)),
            return_exceptions=True,
        )
    finally:
        await aio.close()
    assert isinstance(results[0], InferenceServerException) and "shapes differ" in str(results[0])
    assert isinstance(results[2], InferenceServerException) and "out of range" in str(results[2])
    for refused in (results[0], results[2]):  # the client's error: the gateway neither retries nor ejects
        assert refused.status() == str(grpc.StatusCode.INVALID_ARGUMENT), refused.status()
    for result in (results[1], results[3]):
        assert not isinstance(result, BaseException), result
        assert result.as_numpy("embeddings").shape == (1, 384)


def test_score_task_returns_a_logit_per_pair(
    client: grpcclient.InferenceServerClient, tokenizer: Tokenizer, toy_weights: Path
) -> None:
    query = "What is a man eating?"
    rows = encode(tokenizer, [(query, PAIR[0]), (query, PAIR[1]), (query, UNRELATED)])
    result = client.infer(SCORE_MODEL, inputs(rows))
    logits = result.as_numpy("logits")
    assert logits is not None and logits.shape == (3, 1) and logits.dtype == np.float32
    assert len({round(float(x), 5) for x in logits[:, 0]}) == 3
    local = Encoder(toy_weights / "model.onnx", task="score").run([rows])
    np.testing.assert_allclose(logits, local, atol=1e-5)


async def test_the_gateway_reranks_with_a_cross_encoder(
    triton: TritonServer,
    client: grpcclient.InferenceServerClient,
    tokenizer: Tokenizer,
    weights: Path,
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    """The cross-encoder contract end to end: /v1/rerank and /v1/score on a `score` model send each
    (query, document) pair as one row and turn its logit into sigmoid(logit), sorted best first."""
    config = GatewayConfig(
        grpc_port=None,
        models=[
            ModelConfig(
                id="toy-reranker",
                task="score",
                max_batch=2,  # several Triton requests per call: order must survive the split
                triton_url=triton.grpc_url,
                triton_model=SCORE_MODEL,
                tokenizer_dir=weights,
            )
        ],
    )
    server = await aiohttp_server(create_app(config))
    query = "What is a man eating?"
    documents = [PAIR[0], UNRELATED, PAIR[1], "Bread and food."]
    direct = client.infer(SCORE_MODEL, inputs(encode(tokenizer, [(query, d) for d in documents])))
    logits = direct.as_numpy("logits")
    assert logits is not None
    expected = 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))
    async with aiohttp.ClientSession() as session:
        async with session.post(
            server.make_url("/v1/rerank"), json={"model": "toy-reranker", "query": query, "documents": documents}
        ) as resp:
            assert resp.status == 200, await resp.text()
            results = (await resp.json())["results"]
        async with session.post(
            server.make_url("/v1/score"), json={"model": "toy-reranker", "text_1": query, "text_2": documents}
        ) as resp:
            scores = [d["score"] for d in (await resp.json())["data"]]
        async with session.post(
            server.make_url("/v1/embeddings"), json={"model": "toy-reranker", "input": "x"}
        ) as resp:
            assert resp.status == 400  # a cross-encoder makes no embeddings
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose([r["relevance_score"] for r in results], np.sort(expected)[::-1], atol=1e-5)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
