"""Shared fixtures: the CPU model's tokenizer files and its Triton config (prepared by `make model`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.engine.contract import ModelContract
from gateway.text.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO / "model_repository"
WEIGHTS = MODEL_REPOSITORY / "smollm2" / "weights"


def read_model_config(name: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((MODEL_REPOSITORY / name / "config.pbtxt").read_text(), config)
    return config


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    if not (WEIGHTS / "tokenizer.json").is_file():
        pytest.fail("model not prepared: run `make model` (make test does it)")
    return Tokenizer(WEIGHTS)


@pytest.fixture(scope="session")
def contract() -> ModelContract:
    return ModelContract.from_config(read_model_config("smollm2"))
