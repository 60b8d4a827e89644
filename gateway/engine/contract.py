"""TensorRT-LLM's `tensorrt_llm` token contract over KServe v2: request tensors in, token ids out.

Which optional inputs a model takes is read from its config over gRPC (:class:`ModelContract`),
never assumed: a sampling parameter whose tensor the model lacks is rejected before any request
reaches Triton. Tensors go as ``raw_input_contents`` (little-endian bytes); token ids come back
through a ``memoryview`` cast, no numpy on the per-token path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.core.types import SamplingParams

# OpenAI-level parameter -> the optional input tensor that carries it
PARAM_TENSORS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "runtime_top_p",
    "top_k": "runtime_top_k",
    "seed": "seed",
    "min_tokens": "min_tokens",
    "ignore_eos": "min_tokens",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
REQUIRED_INPUTS = ("input_ids", "input_lengths", "request_output_len")
REQUIRED_OUTPUTS = ("output_ids",)
FINAL_PARAM = "triton_final_response"


class ContractError(ValueError):
    """The model's config does not carry the token contract the gateway speaks."""


@dataclass(frozen=True, slots=True)
class ModelContract:
    """What one Triton model accepts, read from its ``config.pbtxt`` over gRPC."""

    name: str
    inputs: frozenset[str]
    outputs: frozenset[str]
    batched: bool  # max_batch_size > 0: every tensor has a leading batch dimension
    decoupled: bool

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig) -> ModelContract:
        inputs = frozenset(i.name for i in config.input)
        outputs = frozenset(o.name for o in config.output)
        missing = [n for n in REQUIRED_INPUTS if n not in inputs] + [n for n in REQUIRED_OUTPUTS if n not in outputs]
        if missing:
            raise ContractError(f"model {config.name!r} lacks the token contract's tensors: {', '.join(missing)}")
        return cls(
            name=config.name,
            inputs=inputs,
            outputs=outputs,
            batched=config.max_batch_size > 0,
            decoupled=config.model_transaction_policy.decoupled,
        )

    def supports(self, param: str) -> bool:
        tensor = PARAM_TENSORS.get(param)
        return tensor is None or tensor in self.inputs


def _tensor(request: service_pb2.ModelInferRequest, name: str, dtype: str, shape: list[int], raw: bytes) -> None:
    tensor = request.inputs.add()
    tensor.name = name
    tensor.datatype = dtype
    tensor.shape.extend(shape)
    request.raw_input_contents.append(raw)


def build_request(
    contract: ModelContract,
    request_id: str,
    prompt_ids: list[int],
    sampling: SamplingParams,
    end_id: int | None,
    pad_id: int | None,
) -> service_pb2.ModelInferRequest:
    """A streaming ModelInferRequest for one sequence."""
    req = service_pb2.ModelInferRequest(model_name=contract.name, id=request_id)
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    b = [1] if contract.batched else []
    one = [*b, 1]
    inputs = contract.inputs
    _tensor(req, "input_ids", "INT32", [*b, len(prompt_ids)], struct.pack(f"<{len(prompt_ids)}i", *prompt_ids))
    _tensor(req, "input_lengths", "INT32", one, struct.pack("<i", len(prompt_ids)))
    _tensor(req, "request_output_len", "INT32", one, struct.pack("<i", sampling.max_tokens))
    if "streaming" in inputs:
        _tensor(req, "streaming", "BOOL", one, b"\x01")
    if "exclude_input_in_output" in inputs:
        _tensor(req, "exclude_input_in_output", "BOOL", one, b"\x01")
    if end_id is not None and "end_id" in inputs:
        _tensor(req, "end_id", "INT32", one, struct.pack("<i", end_id))
    if pad_id is not None and "pad_id" in inputs:
        _tensor(req, "pad_id", "INT32", one, struct.pack("<i", pad_id))
    if sampling.greedy:
        if "runtime_top_k" in inputs:
            _tensor(req, "runtime_top_k", "INT32", one, struct.pack("<i", 1))
    else:
        if "temperature" in inputs:
            _tensor(req, "temperature", "FP32", one, struct.pack("<f", sampling.temperature))
        if sampling.top_k and "runtime_top_k" in inputs:
            _tensor(req, "runtime_top_k", "INT32", one, struct.pack("<i", sampling.top_k))
        if sampling.top_p < 1.0 and "runtime_top_p" in inputs:
            _tensor(req, "runtime_top_p", "FP32", one, struct.pack("<f", sampling.top_p))
        if sampling.seed is not None and "seed" in inputs:
            _tensor(req, "seed", "UINT64", one, struct.pack("<Q", sampling.seed % (1 << 64)))
    min_tokens = sampling.max_tokens if sampling.ignore_eos else sampling.min_tokens
    if min_tokens and "min_tokens" in inputs:
        _tensor(req, "min_tokens", "INT32", one, struct.pack("<i", min_tokens))
    if sampling.presence_penalty and "presence_penalty" in inputs:
        _tensor(req, "presence_penalty", "FP32", one, struct.pack("<f", sampling.presence_penalty))
    if sampling.frequency_penalty and "frequency_penalty" in inputs:
        _tensor(req, "frequency_penalty", "FP32", one, struct.pack("<f", sampling.frequency_penalty))
    out = req.outputs.add()
    out.name = "output_ids"
    if "sequence_length" in contract.outputs:
        req.outputs.add().name = "sequence_length"
    return req


def parse_tokens(response: service_pb2.ModelInferResponse) -> list[int]:
    """The new token ids of one streamed response (first beam), [] for the empty final one."""
    ids: memoryview | None = None
    length = -1
    raw = response.raw_output_contents
    for i, out in enumerate(response.outputs):
        if out.name == "output_ids":
            ids = memoryview(raw[i]).cast("i")
            # [batch, beam, tokens] or [beam, tokens]: the first beam is the first row
            if len(out.shape) >= 2 and out.shape[-2] > 1:
                ids = ids[: out.shape[-1]]
        elif out.name == "sequence_length":
            length = memoryview(raw[i]).cast("i")[0] if raw[i] else -1
    if ids is None:
        return []
    if 0 <= length < len(ids):
        ids = ids[:length]
    return ids.tolist()


def is_final(response: service_pb2.ModelInferResponse) -> bool:
    params = response.parameters
    return FINAL_PARAM in params and params[FINAL_PARAM].bool_param
