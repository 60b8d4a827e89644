"""An in-process stand-in for Triton, for integration tests of the HTTP layer only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.base import ServerMetadata
from gateway.engine.contract import ModelContract
from gateway.errors import GatewayError, UpstreamError, UpstreamUnavailable
from tests.integration.fake_repository import FakeRepository


class FakeEngine(FakeRepository):
    """Streams a fixed token script (one list per response), honouring request_output_len."""

    def __init__(self, contract: ModelContract, script: list[list[int]], url: str = "fake:0") -> None:
        self.url = url
        self._contract = contract
        self.script = script
        self.unavailable = False
        self.fail_after: int | None = None  # responses before an upstream error
        self.fail_with: type[GatewayError] = UpstreamError
        self.delay = 0.0
        self.requests: list[GenerateRequest] = []
        self.closed = 0  # streams closed, finished or cancelled
        self.halted = 0  # streams stopped in-band (their request halted: the client went away)

    async def contract(self, model: str) -> ModelContract:
        if self.unavailable:
            raise UpstreamUnavailable(f"Triton at {self.url} is unavailable")
        return self._contract

    async def generate(
        self, contract: ModelContract, request: GenerateRequest, end_id: int | None, pad_id: int | None
    ) -> AsyncGenerator[Tokens, None]:
        self.requests.append(request)
        sent = 0
        stop = asyncio.Event()
        request.halt.on_halt(stop.set)  # as a model with TensorRT-LLM's `stop` input: ends at its next step
        try:
            if self.unavailable:
                raise UpstreamUnavailable(f"Triton at {self.url} is unavailable")
            for i, step in enumerate(self.script):
                if self.fail_after is not None and i >= self.fail_after:
                    raise self.fail_with("upstream failed mid-stream: boom")
                ids = step[: request.sampling.max_tokens - sent]
                if not ids:
                    return
                sent += len(ids)
                await asyncio.sleep(self.delay)
                if stop.is_set():
                    self.halted += 1
                    return
                yield Tokens(ids)
        finally:
            self.closed += 1

    async def model_ready(self, model: str) -> bool:
        return not self.unavailable

    async def server_metadata(self, timeout_s: float) -> ServerMetadata:
        if self.unavailable:
            raise UpstreamUnavailable(f"Triton at {self.url} is unavailable")
        return ServerMetadata("triton", "2.0.0-fake", ("classification", "sequence", "statistics"))

    async def close(self) -> None:
        pass
