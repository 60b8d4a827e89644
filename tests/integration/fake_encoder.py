"""An in-process stand-in for Triton's unary side (gateway/engine/base.py's Engine): encoder models that
answer the embedding and cross-encoder tensor contracts with deterministic outputs, and a Whisper model
that answers canned transcripts, with switches to make it fail or slow down. Shared by the gRPC and
REST integration tests of those models."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import soundfile  # type: ignore[import-untyped, unused-ignore]
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2

from gateway.config import ModelConfig, Task
from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.base import ServerMetadata
from gateway.engine.contract import ModelContract
from gateway.engine.tensors import Tensors
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from tests.conftest import MODEL_REPOSITORY, WEIGHTS
from tests.integration.conftest import MODEL
from tests.integration.fake_repository import FakeRepository

MINILM = MODEL_REPOSITORY / "minilm" / "weights"
ENCODERS = "encoders:8001"
EMBEDDER, MATRYOSHKA, SCORER, WHISPER = "embedder", "embedder-mrl", "scorer", "whisper"
MAX_BATCH = 8
DIM = 4
RATE = 16_000


def _tensor(name: str, dtype: int, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": dtype, "dims": dims}


def _config(name: str, output: str, dims: list[int]) -> model_config_pb2.ModelConfig:
    return model_config_pb2.ModelConfig(
        name=name,
        max_batch_size=MAX_BATCH,
        input=[
            model_config_pb2.ModelInput(**_tensor(n, model_config_pb2.TYPE_INT64, [-1]))
            for n in ("input_ids", "attention_mask", "token_type_ids")
        ],
        output=[model_config_pb2.ModelOutput(**_tensor(output, model_config_pb2.TYPE_FP32, dims))],
    )


def vector(ids: list[int]) -> NDArray[np.float32]:
    """The fake embedding model's raw vector of one row of token ids (depends on that row only)."""
    return np.array([len(ids), sum(ids) % 1000 + 1, max(ids) % 100 + 1, ids[len(ids) // 2] % 50 + 1], np.float32)


def unit(v: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = v / np.linalg.norm(v)
    return out


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.float32(x))))


def wav(seconds: float) -> bytes:
    """``seconds`` of quiet noise as a 16 kHz mono 16-bit WAV file, made in memory."""
    samples = np.random.default_rng(0).uniform(-0.1, 0.1, round(seconds * RATE)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class FakeEncoders(FakeRepository):
    """Triton's unary side: ``embedder``/``embedder-mrl`` (embeddings FP32 [4]), ``scorer`` (logits FP32
    [1]: the document's token count, so longer documents rank higher) and ``whisper`` (canned
    TRANSCRIPTS, one per window). Records every call, failed ones included.

    Switches, for what a real server cannot be made to do on cue:

    - ``unavailable``: calls fail as with an unreachable server (gRPC UNAVAILABLE) and the model reads
      as not ready; its config still answers, as the real client's cache of it does;
    - ``fail_after``: answer that many more calls, then fail every one with ``fail_with`` (default
      :class:`UpstreamError`: the model's own error, a gRPC status such as INVALID_ARGUMENT);
    - ``delay``: seconds each call takes; past the call's timeout it fails as a gRPC deadline does
      (:class:`UpstreamTimeout`);
    - ``hold``: when set, calls wait for this event before answering (a call kept in flight).
    """

    url = ENCODERS

    def __init__(self) -> None:
        self.configs = {
            EMBEDDER: _config(EMBEDDER, "embeddings", [DIM]),
            MATRYOSHKA: _config(MATRYOSHKA, "embeddings", [DIM]),
            SCORER: _config(SCORER, "logits", [1]),
        }
        self.transcripts: list[str] = []
        self.calls: list[tuple[str, str, Tensors]] = []
        self.unavailable = False
        self.fail_after: int | None = None
        self.fail_with: type[GatewayError] = UpstreamError
        self.delay = 0.0
        self.hold: asyncio.Event | None = None

    async def contract(self, model: str) -> ModelContract:
        raise UpstreamError(f"{model} does not generate")

    async def generate(
        self, contract: ModelContract, request: GenerateRequest, end_id: int | None, pad_id: int | None
    ) -> AsyncGenerator[Tokens, None]:
        raise UpstreamError("these models do not generate")
        yield Tokens([])  # pragma: no cover

    async def model_config(self, model: str) -> model_config_pb2.ModelConfig:
        return self.configs.get(model, model_config_pb2.ModelConfig(name=model))

    async def infer(
        self, model: str, request_id: str, inputs: Tensors, outputs: tuple[str, ...], timeout_s: float
    ) -> dict[str, NDArray[np.generic]]:
        self.calls.append((model, request_id, inputs))
        await self._upstream(model, timeout_s)
        if model == WHISPER:  # no transcript left: an answer without one, which the gateway refuses
            said = [self.transcripts.pop(0).encode()] if self.transcripts else []
            return {"TRANSCRIPTS": np.array(said, dtype=object)}
        mask = inputs["attention_mask"] == 1
        if outputs == ("logits",):
            documents = (inputs["token_type_ids"] == 1) & mask
            return {"logits": documents.sum(axis=1, keepdims=True).astype(np.float32)}
        rows = zip(inputs["input_ids"], mask, strict=True)
        return {"embeddings": np.stack([vector(ids[real].tolist()) for ids, real in rows])}

    async def _upstream(self, model: str, timeout_s: float) -> None:
        """What the server does before it answers: waits, times out or fails, as switched."""
        if self.hold is not None:
            await self.hold.wait()
        if self.delay:
            await asyncio.sleep(min(self.delay, timeout_s))
            if self.delay > timeout_s:
                raise UpstreamTimeout(f"Triton at {self.url} did not answer in time")
        if self.unavailable:
            raise UpstreamUnavailable(f"Triton at {self.url} is unavailable: connection refused", retry_after=1.0)
        if self.fail_after is not None:
            if self.fail_after <= 0:
                raise self.fail_with(f"Triton at {self.url} failed the request (INVALID_ARGUMENT): {model}: boom")
            self.fail_after -= 1

    async def model_ready(self, model: str) -> bool:
        return not self.unavailable

    async def server_metadata(self, timeout_s: float) -> ServerMetadata:
        if self.unavailable:
            raise UpstreamUnavailable(f"Triton at {self.url} is unavailable: connection refused")
        return ServerMetadata("triton", "2.0.0-fake", ())

    async def close(self) -> None:
        pass


def gateway_models(**embedder: Any) -> list[ModelConfig]:
    """The gateway's models over the fakes: the chat model (on FakeEngine) and the four above, all on
    :data:`ENCODERS`; ``embedder`` overrides fields of the ``embedder`` model's config."""

    def encoder(model_id: str, task: Task, **extra: Any) -> ModelConfig:
        return ModelConfig(
            id=model_id, task=task, triton_model=model_id, triton_url=ENCODERS, tokenizer_dir=MINILM, **extra
        )

    return [
        ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_output_tokens=64),
        encoder(EMBEDDER, "embed", **embedder),
        encoder(MATRYOSHKA, "embed", matryoshka=True),
        encoder(SCORER, "score"),
        encoder(WHISPER, "transcribe"),
    ]
