from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from gateway.engine.contract import ModelContract
from gateway.text.tokenizer import Tokenizer
from tests.conftest import WEIGHTS
from tests.integration.fake_engine import FakeEngine

if TYPE_CHECKING:
    from tests.integration.fake_encoder import FakeEncoders

MODEL = "smollm2-135m-instruct"
REPLY = "Hello there! Café 😀 costs 12€. END of reply."
MAX_BODY = 64 * 1024


@pytest.fixture
def engine(contract: ModelContract, tokenizer: Tokenizer) -> FakeEngine:
    return FakeEngine(contract, [[t] for t in tokenizer.encode(REPLY)])


@pytest.fixture
async def client(aiohttp_client: Callable[[web.Application], Awaitable[TestClient]], engine: FakeEngine) -> TestClient:
    config = GatewayConfig(
        grpc_port=None,
        max_body_bytes=MAX_BODY,
        models=[ModelConfig(id=MODEL, triton_model="smollm2", tokenizer_dir=WEIGHTS, max_output_tokens=256)],
    )
    return await aiohttp_client(create_app(config, lambda url: engine))


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    """all-MiniLM-L6-v2's tokenizer, for the fake encoder models."""
    from tests.integration.fake_encoder import MINILM  # it imports this module

    if not (MINILM / "tokenizer.json").is_file():
        pytest.fail("model not prepared: run `make model` (make test does it)")
    return Tokenizer(MINILM)


@pytest.fixture
def encoders() -> FakeEncoders:
    from tests.integration.fake_encoder import FakeEncoders

    return FakeEncoders()
