"""TensorRT-LLM's `tensorrt_llm` token contract over KServe v2: request tensors in, token ids out.

Which optional inputs a model takes is read from its config over gRPC (:class:`ModelContract`),
never assumed: a sampling parameter whose tensor the model lacks is rejected before any request
reaches Triton. Tensors go as ``raw_input_contents`` (little-endian bytes); token ids come back
through a ``memoryview`` cast, no numpy on the per-token path.

Names and datatypes are those of TensorRT-LLM 1.x
(``triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt``); the names older
releases used (0.19 and older, in tensorrtllm_backend's ``all_models``) are mapped by :data:`LEGACY_NAMES`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.core.types import SamplingParams, TokenLogprob


class TensorSpec(NamedTuple):
    datatype: str  # KServe v2 datatype, as sent on the wire
    code: str  # struct format character of one element


# Every input tensor the gateway can send, and how. build_request packs through this table alone,
# and a model whose config declares one of these with another datatype is refused (from_config).
INPUT_TENSORS: dict[str, TensorSpec] = {
    "input_ids": TensorSpec("INT32", "i"),
    "input_lengths": TensorSpec("INT32", "i"),
    "request_output_len": TensorSpec("INT32", "i"),
    "streaming": TensorSpec("BOOL", "?"),
    "exclude_input_in_output": TensorSpec("BOOL", "?"),
    "end_id": TensorSpec("INT32", "i"),
    "pad_id": TensorSpec("INT32", "i"),
    "temperature": TensorSpec("FP32", "f"),
    "runtime_top_k": TensorSpec("INT32", "i"),
    "runtime_top_p": TensorSpec("FP32", "f"),
    "seed": TensorSpec("UINT64", "Q"),
    "min_tokens": TensorSpec("INT32", "i"),
    "presence_penalty": TensorSpec("FP32", "f"),
    "frequency_penalty": TensorSpec("FP32", "f"),
    "stop_words_list": TensorSpec("INT32", "i"),
    "stop": TensorSpec("BOOL", "?"),
    "repetition_penalty": TensorSpec("FP32", "f"),
    "embedding_bias": TensorSpec("FP32", "f"),
    "return_log_probs": TensorSpec("BOOL", "?"),
    "return_generation_logits": TensorSpec("BOOL", "?"),
    "guided_decoding_guide_type": TensorSpec("BYTES", ""),
    "guided_decoding_guide": TensorSpec("BYTES", ""),
}
# The outputs the gateway reads (parse_tokens, parse_logprobs).
OUTPUT_TENSORS: dict[str, str] = {
    "output_ids": "INT32",
    "sequence_length": "INT32",
    "output_log_probs": "FP32",
    "cum_log_probs": "FP32",
    "generation_logits": "FP32",
}
# TensorRT-LLM's guided decoding types: the backend silently ignores any other, so none is sent
GUIDE_TYPES = frozenset({"json", "json_schema", "regex", "ebnf_grammar"})
# TensorRT-LLM <= 0.19 name -> the name the gateway uses (0.20 on; same datatype and meaning)
LEGACY_NAMES: dict[str, str] = {"random_seed": "seed", "min_length": "min_tokens"}

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
    "stop": "stop_words_list",  # optional: without it the gateway alone stops on stop strings
    "repetition_penalty": "repetition_penalty",
    "logit_bias": "embedding_bias",
    "logprobs": "return_log_probs",
    "top_logprobs": "return_generation_logits",
    "guided_decoding": "guided_decoding_guide_type",
}
# ... and the output tensor it needs back
PARAM_OUTPUTS: dict[str, str] = {"logprobs": "output_log_probs", "top_logprobs": "generation_logits"}
REQUIRED_INPUTS = ("input_ids", "input_lengths", "request_output_len")
# what a health probe asks of a model: one greedy token
PROBE_SAMPLING = SamplingParams(max_tokens=1, temperature=0.0)
REQUIRED_OUTPUTS = ("output_ids",)
FINAL_PARAM = "triton_final_response"


class ContractError(ValueError):
    """The model's config does not carry the token contract the gateway speaks."""


def kserve_datatype(data_type: int) -> str:
    """A config's ``TYPE_INT32`` as the wire's ``INT32`` (``TYPE_STRING`` is ``BYTES``)."""
    name = model_config_pb2.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


@dataclass(frozen=True, slots=True)
class ModelContract:
    """What one Triton model accepts, read from its ``config.pbtxt`` over gRPC."""

    name: str
    inputs: frozenset[str]  # the gateway's names: a legacy name is listed under its current one
    outputs: frozenset[str]
    batched: bool  # max_batch_size > 0: every tensor has a leading batch dimension
    decoupled: bool
    # the grammar engine behind guided decoding (config parameter guided_decoding_backend):
    # "xgrammar" (TensorRT-LLM), "llguidance" (the CPU model); None when the model has none
    guided_decoding_backend: str | None = None
    # gateway name -> the model's own name, where a legacy config differs
    renamed: Mapping[str, str] = field(default_factory=dict, compare=False)
    # (end_id, pad_id) -> what every request of this model carries alike (see :meth:`request_base`)
    _bases: dict[tuple[int | None, int | None], service_pb2.ModelInferRequest] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig) -> ModelContract:
        declared = {i.name: i for i in config.input}
        renamed = {new: old for old, new in LEGACY_NAMES.items() if old in declared and new not in declared}
        inputs = (declared.keys() - renamed.values()) | renamed.keys()
        outputs = {o.name: o for o in config.output}
        missing = [n for n in REQUIRED_INPUTS if n not in inputs] + [n for n in REQUIRED_OUTPUTS if n not in outputs]
        if missing:
            raise ContractError(f"model {config.name!r} lacks the token contract's tensors: {', '.join(missing)}")
        wrong: list[str] = []
        for name, spec in INPUT_TENSORS.items():
            own = renamed.get(name, name)
            if own in declared and (dtype := kserve_datatype(declared[own].data_type)) != spec.datatype:
                wrong.append(f"input {own} is {dtype}, not {spec.datatype}")
        for name, expected in OUTPUT_TENSORS.items():
            if name in outputs and (dtype := kserve_datatype(outputs[name].data_type)) != expected:
                wrong.append(f"output {name} is {dtype}, not {expected}")
        if wrong:
            raise ContractError(f"model {config.name!r} declares the token contract's tensors as: {'; '.join(wrong)}")
        backend = None
        if "guided_decoding_guide_type" in inputs and "guided_decoding_backend" in config.parameters:
            value = config.parameters["guided_decoding_backend"].string_value.strip()
            backend = value if value and not value.startswith("${") else None  # an unfilled template
        return cls(
            name=config.name,
            inputs=frozenset(inputs),
            outputs=frozenset(outputs),
            batched=config.max_batch_size > 0,
            decoupled=config.model_transaction_policy.decoupled,
            guided_decoding_backend=backend,
            renamed=renamed,
        )

    @property
    def stoppable(self) -> bool:
        """A request can be ended in-band (TensorRT-LLM's ``stop`` input), not only by cancelling its call."""
        return "stop" in self.inputs

    @property
    def shareable(self) -> bool:
        """Its requests can share a stream: each ends with a final response (decoupled) and can be stopped."""
        return self.decoupled and self.stoppable

    def request_base(self, end_id: int | None, pad_id: int | None) -> service_pb2.ModelInferRequest:
        """The part of a generation request that is the same for every request of this model with these
        special tokens: the model, the final-response flag, the constant tensors and the outputs. Built
        once; :func:`build_request` copies it (one C-level copy) and appends the request's own tensors."""
        base = self._bases.get((end_id, pad_id))
        if base is None:
            r = _Request(self, "")
            r.req.parameters["triton_enable_empty_final_response"].bool_param = True
            r.scalar("streaming", True)
            r.scalar("exclude_input_in_output", True)
            if end_id is not None:
                r.scalar("end_id", end_id)
            if pad_id is not None:
                r.scalar("pad_id", pad_id)
            r.req.outputs.add().name = "output_ids"
            if "sequence_length" in self.outputs:
                r.req.outputs.add().name = "sequence_length"
            base = self._bases[(end_id, pad_id)] = r.req
        return base

    def supports(self, param: str) -> bool:
        tensor = PARAM_TENSORS.get(param)
        if tensor is not None and tensor not in self.inputs:
            return False
        if param == "guided_decoding" and self.guided_decoding_backend is None:
            return False
        output = PARAM_OUTPUTS.get(param)
        return output is None or output in self.outputs


class _Request:
    """One ModelInferRequest under construction: each tensor packed as INPUT_TENSORS says."""

    __slots__ = ("batch", "contract", "req")

    def __init__(
        self, contract: ModelContract, request_id: str, base: service_pb2.ModelInferRequest | None = None
    ) -> None:
        self.contract = contract
        self.req = service_pb2.ModelInferRequest()
        if base is not None:
            self.req.CopyFrom(base)
        else:
            self.req.model_name = contract.name
        self.req.id = request_id
        self.batch = [1] if contract.batched else []

    def add(self, name: str, values: Sequence[float], shape: list[int] | None = None) -> None:
        spec = INPUT_TENSORS[name]
        tensor = self.req.inputs.add()
        tensor.name = self.contract.renamed.get(name, name)
        tensor.datatype = spec.datatype
        tensor.shape.extend([*self.batch, *(shape if shape is not None else [1])])
        self.req.raw_input_contents.append(struct.pack(f"<{len(values)}{spec.code}", *values))

    def scalar(self, name: str, value: float) -> None:
        """An optional per-request value: sent only when the model declares the tensor."""
        if name in self.contract.inputs:
            self.add(name, [value])

    def text(self, name: str, value: str) -> None:
        """A STRING [1] tensor (KServe BYTES: a 4-byte little-endian length, then the bytes)."""
        data = value.encode()
        tensor = self.req.inputs.add()
        tensor.name = name
        tensor.datatype = "BYTES"
        tensor.shape.extend([*self.batch, 1])
        self.req.raw_input_contents.append(struct.pack("<I", len(data)) + data)


def build_request(
    contract: ModelContract,
    request_id: str,
    prompt_ids: list[int],
    sampling: SamplingParams,
    end_id: int | None,
    pad_id: int | None,
    vocab_size: int = 0,
) -> service_pb2.ModelInferRequest:
    """A streaming ModelInferRequest for one sequence (``vocab_size``: the length of embedding_bias)."""
    r = _Request(contract, request_id, contract.request_base(end_id, pad_id))
    r.add("input_ids", prompt_ids, [len(prompt_ids)])
    r.add("input_lengths", [len(prompt_ids)])
    r.add("request_output_len", [sampling.max_tokens])
    if sampling.greedy:
        r.scalar("runtime_top_k", 1)
    else:
        r.scalar("temperature", sampling.temperature)
        if sampling.top_k:
            r.scalar("runtime_top_k", sampling.top_k)
        if sampling.top_p < 1.0:
            r.scalar("runtime_top_p", sampling.top_p)
        if sampling.seed is not None:
            r.scalar("seed", sampling.seed % (1 << 64))
    min_tokens = sampling.max_tokens if sampling.ignore_eos else sampling.min_tokens
    if min_tokens:
        r.scalar("min_tokens", min_tokens)
    if sampling.presence_penalty:
        r.scalar("presence_penalty", sampling.presence_penalty)
    if sampling.frequency_penalty:
        r.scalar("frequency_penalty", sampling.frequency_penalty)
    if sampling.repetition_penalty != 1.0:
        r.scalar("repetition_penalty", sampling.repetition_penalty)
    stops = sampling.stop_ids + tuple((t,) for t in sampling.stop_token_ids)
    if stops and "stop_words_list" in contract.inputs:
        ids, offsets = stop_words_rows(stops)
        r.add("stop_words_list", ids + offsets, [2, len(ids)])
    if sampling.logit_bias:
        bias = [0.0] * vocab_size
        for token, value in sampling.logit_bias:
            bias[token] = value
        r.add("embedding_bias", bias, [vocab_size])
    if sampling.guide is not None:
        r.text("guided_decoding_guide_type", sampling.guide.type)
        r.text("guided_decoding_guide", sampling.guide.text)
    if sampling.logprobs:
        r.add("return_log_probs", [True])
        r.req.outputs.add().name = "output_log_probs"
        if sampling.top_logprobs:
            r.add("return_generation_logits", [True])
            r.req.outputs.add().name = "generation_logits"
    return r.req


def build_stop_request(contract: ModelContract, request_id: str) -> service_pb2.ModelInferRequest:
    """TensorRT-LLM's in-band stop: a request with the same id and ``stop`` true ends that request.

    The required inputs are there only because Triton checks them; the model reads ``stop`` first.
    """
    r = _Request(contract, request_id)
    r.req.parameters["triton_enable_empty_final_response"].bool_param = True
    r.add("input_ids", [0], [1])
    r.add("input_lengths", [1])
    r.add("request_output_len", [1])
    r.add("stop", [True])
    return r.req


def stop_words_rows(sequences: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """TensorRT-LLM's ``stop_words_list`` rows: every sequence's ids, then their end offsets padded with -1."""
    ids: list[int] = []
    offsets: list[int] = []
    for seq in sequences:
        ids.extend(seq)
        offsets.append(len(ids))
    return ids, offsets + [-1] * (len(ids) - len(offsets))


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


def parse_logprobs(response: service_pb2.ModelInferResponse, ids: list[int], top: int) -> list[TokenLogprob]:
    """The logprobs of a response's new tokens ``ids`` (as :func:`parse_tokens` read them), with the
    ``top`` most likely tokens of each step computed from ``generation_logits`` (log-softmax over the
    vocabulary).

    A model that returns values for the whole sequence so far is read from the end: the last
    ``len(ids)`` values belong to this response's tokens.
    """
    count = len(ids)
    if count == 0:
        return []
    logprobs: NDArray[np.float32] | None = None
    logits: NDArray[np.float32] | None = None
    raw = response.raw_output_contents
    for i, out in enumerate(response.outputs):
        if out.name == "output_log_probs":
            row = np.frombuffer(raw[i], dtype="<f4")
            length = out.shape[-1] if out.shape else len(row)
            logprobs = row[:length][-count:]  # first beam
        elif out.name == "generation_logits" and top:
            vocab = out.shape[-1]
            steps = out.shape[-2] if len(out.shape) >= 2 else 1
            logits = np.frombuffer(raw[i], dtype="<f4")[: steps * vocab].reshape(steps, vocab)[-count:]
    if logprobs is None or len(logprobs) < count:
        raise ContractError("the model returned no output_log_probs for its tokens")
    tops: list[tuple[tuple[int, float], ...]] = [()] * count
    if logits is not None and len(logits) == count:
        tops = [_top_logprobs(row, top) for row in logits]
    return [TokenLogprob(t, float(lp), k) for t, lp, k in zip(ids, logprobs.tolist(), tops, strict=True)]


_BLOCK = 256  # top-k search: the best blocks by their maximum first, then the k best in those blocks


def _top_logprobs(logits: NDArray[np.float32], k: int) -> tuple[tuple[int, float], ...]:
    """The k most likely tokens of one step; tokens the model could not produce (-inf) are left out.

    O(vocab) in a few vectorised passes: block maxima narrow the search to k blocks (a token in the
    top k lies in one of the k blocks with the highest maxima), so only k x 256 logits are sorted.
    """
    vocab = len(logits)
    blocks = -(-vocab // _BLOCK)
    padded = (
        logits if vocab == blocks * _BLOCK else np.pad(logits, (0, blocks * _BLOCK - vocab), constant_values=-np.inf)
    )
    grid = padded.reshape(blocks, _BLOCK)
    maxima = grid.max(axis=1)
    top_blocks = np.argpartition(-maxima, k - 1)[:k] if k < blocks else np.arange(blocks)
    candidates = (top_blocks[:, None] * _BLOCK + np.arange(_BLOCK)).ravel()
    values = padded[candidates]
    order = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    order = order[np.argsort(-values[order], kind="stable")]
    peak = float(maxima.max())
    if not np.isfinite(peak):
        return ()
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float32).sum(dtype=np.float64)))
    return tuple((int(candidates[i]), float(values[i]) - log_total) for i in order if np.isfinite(values[i]))


def is_final(response: service_pb2.ModelInferResponse) -> bool:
    params = response.parameters
    return FINAL_PARAM in params and params[FINAL_PARAM].bool_param
