"""Gateway configuration: served models and server settings, validated with pydantic.

The embedded default (one CPU model in a tritonserver the gateway launches) needs no file. Common
settings have environment overrides (see :func:`from_env`), and the CLI flags override those.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_TRITON_MODEL = "smollm2"
SYNTHETIC_MODEL_ID = "synthetic"


class ModelConfig(BaseModel):
    """One OpenAI model id served by one Triton model that speaks the token contract."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="the OpenAI `model` name clients send")
    triton_url: str = Field(default="127.0.0.1:8001", description="Triton gRPC host:port")
    triton_model: str = Field(description="model name in Triton's repository")
    tokenizer_dir: Path = Field(description="directory with tokenizer.json and tokenizer_config.json")
    context_length: int | None = Field(
        default=None, ge=1, description="prompt + output limit; default: the tokenizer's"
    )
    max_output_tokens: int = Field(default=4096, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(default=1024, ge=1, description="chat output limit when the request sets none")
    owned_by: str = "triton"


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    triton_timeout: float = Field(default=5.0, gt=0, description="seconds for Triton health/config calls")
    grpc_host: str = Field(default="127.0.0.1", description="the gRPC API's listen address")
    grpc_port: int | None = Field(default=50051, ge=0, le=65535, description="None: no gRPC API")
    models: list[ModelConfig]


def embedded_models(triton_url: str, model_repository: Path, default_max_tokens: int) -> list[ModelConfig]:
    """The embedded CPU Triton's models: SmolLM2, and the synthetic benchmark upstream (same tokenizer)."""
    tokenizer_dir = model_repository / DEFAULT_TRITON_MODEL / "weights"
    return [
        ModelConfig(
            id=model_id,
            triton_url=triton_url,
            triton_model=triton_model,
            tokenizer_dir=tokenizer_dir,
            default_max_tokens=default_max_tokens,
        )
        for model_id, triton_model in ((DEFAULT_MODEL_ID, DEFAULT_TRITON_MODEL), (SYNTHETIC_MODEL_ID, "synthetic"))
    ]


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)
