"""The seam between the gateway and an inference server: what every engine implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2

from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.contract import ModelContract
from gateway.engine.tensors import Tensors


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """What a server says it is (Triton's ServerMetadata): its name, version and protocol extensions."""

    name: str
    version: str
    extensions: tuple[str, ...]


class Engine(Protocol):
    """The models of one server: token streams (generation) and unary tensor calls (the rest)."""

    url: str

    async def contract(self, model: str) -> ModelContract:
        """What the model accepts; raises a GatewayError when it cannot be served."""
        ...

    def generate(
        self, contract: ModelContract, request: GenerateRequest, end_id: int | None, pad_id: int | None
    ) -> AsyncGenerator[Tokens, None]:
        """New token ids as they are generated; closing the iterator stops the request."""
        ...

    async def model_config(self, model: str) -> model_config_pb2.ModelConfig:
        """The model's config as the server reports it."""
        ...

    async def infer(
        self, model: str, request_id: str, inputs: Tensors, outputs: tuple[str, ...], timeout_s: float
    ) -> dict[str, NDArray[np.generic]]:
        """One request, one response: embeddings, scores, transcripts."""
        ...

    async def model_ready(self, model: str) -> bool: ...

    async def server_metadata(self, timeout_s: float) -> ServerMetadata:
        """The server's name and version, within ``timeout_s`` seconds; raises a GatewayError otherwise."""
        ...

    async def close(self) -> None: ...
