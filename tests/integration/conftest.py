from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.config import GatewayConfig, ModelConfig
from gateway.engine.contract import ModelContract
from gateway.text.tokenizer import Tokenizer
from tests.conftest import WEIGHTS
from tests.integration.fake_engine import FakeEngine

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
