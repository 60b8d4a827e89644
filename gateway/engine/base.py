"""The seam between the gateway and an inference server: what every engine implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.contract import ModelContract


class Engine(Protocol):
    """Token ids in, token ids out, for the models of one server."""

    url: str

    async def contract(self, model: str) -> ModelContract:
        """What the model accepts; raises a GatewayError when it cannot be served."""
        ...

    def generate(
        self, contract: ModelContract, request: GenerateRequest, end_id: int | None, pad_id: int | None
    ) -> AsyncGenerator[Tokens, None]:
        """New token ids as they are generated; closing the iterator stops the request."""
        ...

    async def model_ready(self, model: str) -> bool: ...

    async def close(self) -> None: ...
