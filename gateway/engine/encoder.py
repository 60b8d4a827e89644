"""The tensor contract of encoder models (embeddings, cross-encoders) over KServe v2, read from a
model's config as :mod:`gateway.engine.contract` reads the token contract of an LLM.

- in: ``input_ids`` and, when the model declares them, ``attention_mask`` and ``token_type_ids``,
  INT64 (or INT32) ``[batch, tokens]``, right-padded with the tokenizer's pad id;
- out, embed: ``embeddings`` FP32 ``[batch, dim]`` (pooled in the model), or ``last_hidden_state``
  FP32 ``[batch, tokens, dim]`` (a plain encoder export: the gateway pools it);
- out, score: ``logits`` FP32 ``[batch, 1]`` (or ``[batch]``), one per (query, document) pair.

Documented for deployments in model_repository/minilm/config.pbtxt and the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2

from gateway.engine.contract import kserve_datatype
from gateway.errors import UpstreamError

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_ID_TYPES: dict[str, type[np.signedinteger[Any]]] = {"INT64": np.int64, "INT32": np.int32}
_OUTPUTS = {"embed": ("embeddings", "last_hidden_state"), "score": ("logits",)}


@dataclass(frozen=True, slots=True)
class EncoderContract:
    """What one encoder model takes and returns, read from its config."""

    inputs: tuple[str, ...]  # of input_ids, attention_mask, token_type_ids: those the model declares
    id_type: type[np.signedinteger[Any]]  # np.int64 or np.int32, as the model declares input_ids
    output: str
    max_batch: int
    dim: int | None  # the embedding width, when the config states it

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig, task: str, max_batch: int | None) -> EncoderContract:
        declared = {i.name: i for i in config.input}
        if "input_ids" not in declared:
            raise UpstreamError(f"model {config.name!r} has no input_ids input: not an encoder")
        id_type = _ID_TYPES.get(kserve_datatype(declared["input_ids"].data_type))
        if id_type is None:
            raise UpstreamError(f"model {config.name!r}: input_ids must be INT64 or INT32")
        outputs = {o.name: o for o in config.output}
        output = next((name for name in _OUTPUTS[task] if name in outputs), None)
        if output is None:
            raise UpstreamError(f"model {config.name!r} returns none of {', '.join(_OUTPUTS[task])}")
        if config.max_batch_size < 1:
            raise UpstreamError(f"model {config.name!r} must batch (max_batch_size > 0) to serve as an encoder")
        dims = list(outputs[output].dims)
        dim = dims[-1] if output != "logits" and dims and dims[-1] > 0 else None
        return cls(
            inputs=tuple(n for n in ENCODER_INPUTS if n in declared),
            id_type=id_type,
            output=output,
            max_batch=min(max_batch or config.max_batch_size, config.max_batch_size),
            dim=dim,
        )
