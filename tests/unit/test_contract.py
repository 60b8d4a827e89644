"""Requests built for, and responses read from, the `tensorrt_llm` token contract."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.core.types import Guide, SamplingParams
from gateway.engine.contract import (
    ContractError,
    ModelContract,
    build_request,
    is_final,
    kserve_datatype,
    parse_logprobs,
    parse_tokens,
)
from tests.conftest import read_model_config


def tensors(req: service_pb2.ModelInferRequest) -> dict[str, tuple[str, list[int], bytes]]:
    return {t.name: (t.datatype, list(t.shape), raw) for t, raw in zip(req.inputs, req.raw_input_contents, strict=True)}


def test_cpu_model_config_carries_the_contract(contract: ModelContract) -> None:
    assert contract.batched and contract.decoupled
    for name in ("input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "streaming", "seed"):
        assert name in contract.inputs
    assert {"output_ids", "sequence_length"} <= contract.outputs
    assert contract.supports("top_k") and contract.supports("seed") and contract.supports("ignore_eos")


def test_config_without_token_contract_is_rejected() -> None:
    config = model_config_pb2.ModelConfig(name="text_model")
    config.input.add(name="text_input")
    config.output.add(name="text_output")
    with pytest.raises(ContractError, match="input_ids"):
        ModelContract.from_config(config)


def test_config_typing_a_tensor_otherwise_is_rejected() -> None:
    config = read_model_config("smollm2")
    next(i for i in config.input if i.name == "seed").data_type = model_config_pb2.TYPE_INT64
    next(o for o in config.output if o.name == "output_ids").data_type = model_config_pb2.TYPE_INT64
    with pytest.raises(ContractError, match="input seed is INT64, not UINT64; output output_ids is INT64, not INT32"):
        ModelContract.from_config(config)


def test_kserve_datatype() -> None:
    assert kserve_datatype(model_config_pb2.TYPE_FP32) == "FP32"
    assert kserve_datatype(model_config_pb2.TYPE_BOOL) == "BOOL"
    assert kserve_datatype(model_config_pb2.TYPE_STRING) == "BYTES"


def test_legacy_tensor_names_are_sent_as_the_model_names_them() -> None:
    """TensorRT-LLM <= 0.19 calls seed `random_seed` and min_tokens `min_length`."""
    config = read_model_config("tensorrt_llm")
    for tensor in config.input:
        tensor.name = {"seed": "random_seed", "min_tokens": "min_length"}.get(tensor.name, tensor.name)
    contract = ModelContract.from_config(config)
    assert {"seed", "min_tokens"} <= contract.inputs and not {"random_seed", "min_length"} & contract.inputs
    assert contract.supports("seed") and contract.supports("ignore_eos")
    sampling = SamplingParams(max_tokens=4, temperature=0.5, seed=3, min_tokens=2)
    t = tensors(build_request(contract, "r", [1], sampling, None, None))
    assert t["random_seed"] == ("UINT64", [1, 1], struct.pack("<Q", 3))
    assert t["min_length"] == ("INT32", [1, 1], struct.pack("<i", 2))
    assert "seed" not in t and "min_tokens" not in t
    # a config with both names is a current one: its own names win
    config.input.add(name="seed", data_type=model_config_pb2.TYPE_UINT64, dims=[1], optional=True)
    assert "seed" in tensors(build_request(ModelContract.from_config(config), "r", [1], sampling, None, None))


def test_unbatched_model_gets_no_batch_dimension() -> None:
    config = read_model_config("smollm2")
    config.max_batch_size = 0
    t = tensors(build_request(ModelContract.from_config(config), "r", [5, 6], SamplingParams(max_tokens=3), 2, None))
    assert t["input_ids"] == ("INT32", [2], struct.pack("<2i", 5, 6))
    assert t["request_output_len"] == ("INT32", [1], struct.pack("<i", 3))


def test_greedy_request_tensors(contract: ModelContract) -> None:
    req = build_request(contract, "r-1", [5, 6, 7], SamplingParams(max_tokens=9, temperature=0.0), 2, 2)
    t = tensors(req)
    assert req.model_name == "smollm2" and req.id == "r-1"
    assert req.parameters["triton_enable_empty_final_response"].bool_param
    assert t["input_ids"] == ("INT32", [1, 3], struct.pack("<3i", 5, 6, 7))
    assert t["input_lengths"] == ("INT32", [1, 1], struct.pack("<i", 3))
    assert t["request_output_len"] == ("INT32", [1, 1], struct.pack("<i", 9))
    assert t["streaming"] == ("BOOL", [1, 1], b"\x01")
    assert t["end_id"][2] == struct.pack("<i", 2)
    assert t["runtime_top_k"][2] == struct.pack("<i", 1)
    assert "temperature" not in t and "seed" not in t
    assert [o.name for o in req.outputs] == ["output_ids", "sequence_length"]


def test_sampling_request_tensors(contract: ModelContract) -> None:
    sampling = SamplingParams(max_tokens=4, temperature=0.7, top_p=0.9, top_k=40, seed=-1, min_tokens=2)
    t = tensors(build_request(contract, "r", [1], sampling, None, None))
    assert struct.unpack("<f", t["temperature"][2])[0] == pytest.approx(0.7)
    assert struct.unpack("<f", t["runtime_top_p"][2])[0] == pytest.approx(0.9)
    assert struct.unpack("<i", t["runtime_top_k"][2])[0] == 40
    assert t["seed"][0] == "UINT64" and struct.unpack("<Q", t["seed"][2])[0] == 2**64 - 1
    assert struct.unpack("<i", t["min_tokens"][2])[0] == 2
    assert "end_id" not in t and "pad_id" not in t


def test_ignore_eos_asks_for_every_token(contract: ModelContract) -> None:
    t = tensors(build_request(contract, "r", [1], SamplingParams(max_tokens=32, ignore_eos=True), -1, None))
    assert struct.unpack("<i", t["min_tokens"][2])[0] == 32


def response(ids: list[int], length: int | None, final: bool = False, beams: int = 1) -> service_pb2.ModelInferResponse:
    resp = service_pb2.ModelInferResponse()
    out = resp.outputs.add(name="output_ids", datatype="INT32", shape=[1, beams, len(ids) // beams])
    resp.raw_output_contents.append(struct.pack(f"<{len(ids)}i", *ids))
    if length is not None:
        resp.outputs.add(name="sequence_length", datatype="INT32", shape=[1, 1])
        resp.raw_output_contents.append(struct.pack("<i", length))
    if final:
        resp.parameters["triton_final_response"].bool_param = True
    assert out.name == "output_ids"
    return resp


def test_parse_tokens() -> None:
    assert parse_tokens(response([11, 12], 2)) == [11, 12]
    assert parse_tokens(response([11, 12, 0, 0], 2)) == [11, 12]  # padded to sequence_length
    assert parse_tokens(response([11, 12, 13, 14], None, beams=2)) == [11, 12]  # first beam
    assert parse_tokens(service_pb2.ModelInferResponse()) == []


def test_final_flag() -> None:
    assert is_final(response([], 0, final=True))
    assert not is_final(response([1], 1))


def trtllm_contract(backend: str = "xgrammar", logits: bool = True) -> ModelContract:
    config = read_model_config("tensorrt_llm")
    config.parameters["guided_decoding_backend"].string_value = backend
    if not logits:
        kept = [o for o in config.output if o.name != "generation_logits"]
        del config.output[:]
        config.output.extend(kept)
    return ModelContract.from_config(config)


def test_features_follow_the_model_config() -> None:
    full = trtllm_contract()
    assert full.guided_decoding_backend == "xgrammar"
    for param in ("logprobs", "top_logprobs", "logit_bias", "repetition_penalty", "guided_decoding"):
        assert full.supports(param), param
    assert not trtllm_contract(logits=False).supports("top_logprobs")  # an engine without gathered logits
    unfilled = trtllm_contract(backend="${guided_decoding_backend}")
    assert unfilled.guided_decoding_backend is None and not unfilled.supports("guided_decoding")
    assert not trtllm_contract(backend="").supports("guided_decoding")


def test_logprobs_bias_and_guide_tensors() -> None:
    contract = trtllm_contract()
    sampling = SamplingParams(
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
        logit_bias=((2, -100.0), (5, 1.5)),
        repetition_penalty=1.2,
        stop_token_ids=(7,),
        guide=Guide("json_schema", '{"type":"object"}'),
    )
    req = build_request(contract, "r", [1, 2], sampling, 0, 0, vocab_size=8)
    t = tensors(req)
    assert t["return_log_probs"][2] == b"\x01" and t["return_generation_logits"][2] == b"\x01"
    bias = struct.unpack("<8f", t["embedding_bias"][2])
    assert bias == (0.0, 0.0, -100.0, 0.0, 0.0, 1.5, 0.0, 0.0) and t["embedding_bias"][1] == [1, 8]
    assert struct.unpack("<f", t["repetition_penalty"][2])[0] == pytest.approx(1.2)
    assert struct.unpack("<2i", t["stop_words_list"][2]) == (7, 1) and t["stop_words_list"][1] == [1, 2, 1]
    kind, shape, raw = t["guided_decoding_guide_type"]
    assert kind == "BYTES" and shape == [1, 1] and raw == struct.pack("<I", 11) + b"json_schema"
    assert t["guided_decoding_guide"][2][4:] == b'{"type":"object"}'
    assert {o.name for o in req.outputs} == {"output_ids", "sequence_length", "output_log_probs", "generation_logits"}
    plain = tensors(build_request(contract, "r", [1], SamplingParams(max_tokens=4), 0, 0, vocab_size=8))
    assert not {"return_log_probs", "embedding_bias", "guided_decoding_guide_type"} & plain.keys()


def with_logprobs(
    resp: service_pb2.ModelInferResponse, logprobs: list[float], logits: np.ndarray | None = None
) -> service_pb2.ModelInferResponse:
    resp.outputs.add(name="output_log_probs", datatype="FP32", shape=[1, len(logprobs)])
    resp.raw_output_contents.append(struct.pack(f"<{len(logprobs)}f", *logprobs))
    if logits is not None:
        resp.outputs.add(name="generation_logits", datatype="FP32", shape=[1, *logits.shape])
        resp.raw_output_contents.append(logits.astype("<f4").tobytes())
    return resp


def test_parse_logprobs_and_top_alternatives() -> None:
    logits = np.array([[0.0, 2.0, 1.0, -np.inf], [3.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    resp = with_logprobs(response([1, 0], 2), [-0.4, -0.1], logits)
    got = parse_logprobs(resp, parse_tokens(resp), top=4)
    assert [(t.id, round(t.logprob, 3)) for t in got] == [(1, -0.4), (0, -0.1)]
    first = got[0].top
    assert [t for t, _ in first] == [1, 2, 0]  # best first; the impossible token is left out
    expected = logits[0, :3] - np.log(np.exp(logits[0, :3]).sum())
    assert [v for _, v in first] == pytest.approx(sorted(expected.tolist(), reverse=True))
    # a model that sends the whole sequence's logprobs on each response: the last values are the new tokens'
    resp = with_logprobs(response([9], 1), [-1.0, -2.0, -3.0])
    assert parse_logprobs(resp, [9], top=0)[0].logprob == pytest.approx(-3.0)
    with pytest.raises(ContractError):
        parse_logprobs(response([9], 1), [9], top=0)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_top_alternatives_over_a_full_vocabulary(k: int) -> None:
    rng = np.random.default_rng(k)
    logits = (rng.standard_normal(49152) * 3).astype(np.float32)
    logits[rng.random(49152) < 0.3] = -np.inf  # masked by a grammar or a logit bias
    resp = with_logprobs(response([0], 1), [-1.0], logits[None, :])
    top = parse_logprobs(resp, [0], top=k)[0].top
    finite = logits[np.isfinite(logits)].astype(np.float64)
    reference = logits.astype(np.float64) - (finite.max() + np.log(np.exp(finite - finite.max()).sum()))
    best = np.argsort(-reference, kind="stable")[:k]
    assert [t for t, _ in top] == best.tolist()
    assert [v for _, v in top] == pytest.approx(reference[best].tolist(), abs=1e-4)
