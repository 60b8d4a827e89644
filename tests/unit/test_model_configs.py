"""The LLM configs of model_repository/ against the gateway's token contract, and the CPU models against
the TensorRT-LLM one; the embedding and Whisper models against theirs; deploy/tensorrt_llm/fill_config.py
on the real config."""

from __future__ import annotations

import importlib.util
import math
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.core.encode import EncoderContract
from gateway.core.types import Guide, SamplingParams
from gateway.engine.contract import (
    INPUT_TENSORS,
    LEGACY_NAMES,
    REQUIRED_INPUTS,
    ModelContract,
    build_request,
    build_stop_request,
    kserve_datatype,
    parse_tokens,
)

REPO = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO / "model_repository"
CPU_MODELS = ("smollm2", "synthetic")
# the models that speak the token contract (minilm and whisper have contracts of their own, below)
CONFIGS = [MODEL_REPOSITORY / name / "config.pbtxt" for name in (*CPU_MODELS, "tensorrt_llm")]
GPU = MODEL_REPOSITORY / "tensorrt_llm" / "config.pbtxt"
ITEM_BYTES = {"INT32": 4, "UINT64": 8, "FP32": 4, "BOOL": 1}
VOCAB = 8  # the length of the embedding_bias sent
# What smollm2 declares: the tensors its engine honours (model_repository/smollm2/1/model.py)
SMOLLM2_INPUTS = {
    *("input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "streaming", "stop"),
    *("temperature", "runtime_top_k", "runtime_top_p", "min_tokens", "seed", "stop_words_list"),
    *("repetition_penalty", "presence_penalty", "frequency_penalty", "bad_words_list", "embedding_bias"),
    *("return_log_probs", "return_generation_logits", "guided_decoding_guide_type", "guided_decoding_guide"),
}
SMOLLM2_OUTPUTS = {"output_ids", "sequence_length", "output_log_probs", "cum_log_probs", "generation_logits"}

# every optional parameter set, sampled and greedy, and ignore_eos (min_tokens = max_tokens)
SAMPLINGS = (
    SamplingParams(
        max_tokens=8, temperature=0.7, top_p=0.9, top_k=40, seed=7, min_tokens=2, presence_penalty=0.5,
        frequency_penalty=-0.5,
    ),
    SamplingParams(max_tokens=8, temperature=0.0, seed=7, min_tokens=2, presence_penalty=0.5, frequency_penalty=0.5),
    SamplingParams(max_tokens=8, ignore_eos=True, stop=("x", "yz"), stop_ids=((9,), (10, 11))),
)  # fmt: skip


def samplings(contract: ModelContract) -> list[SamplingParams]:
    """SAMPLINGS, and one with every optional tensor whose input the model declares."""
    extra: dict[str, Any] = {}
    if "repetition_penalty" in contract.inputs:
        extra["repetition_penalty"] = 1.1
    if "embedding_bias" in contract.inputs:
        extra["logit_bias"] = ((3, -100.0), (5, 2.5))
    if "return_log_probs" in contract.inputs:
        extra["logprobs"] = True
        if "return_generation_logits" in contract.inputs:
            extra["top_logprobs"] = 2
    if "guided_decoding_guide_type" in contract.inputs:
        extra["guide"] = Guide("json_schema", '{"type": "object"}')
    everything = SamplingParams(max_tokens=8, temperature=0.5, stop_ids=((4,),), **extra)
    return [*SAMPLINGS, everything] if extra else list(SAMPLINGS)


def raw_size(datatype: str, count: int, raw: bytes) -> int:
    """The bytes ``count`` elements take (BYTES: each a 4-byte little-endian length, then its bytes)."""
    if datatype != "BYTES":
        return count * ITEM_BYTES[datatype]
    offset = 0
    for _ in range(count):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4 + length
    return offset


def parse(path: Path) -> Any:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def dtype_name(data_type: int) -> str:
    return str(model_config_pb2.DataType.Name(data_type))


def dims_match(shape: list[int], dims: list[int]) -> bool:
    return len(shape) == len(dims) and all(d in (-1, s) for s, d in zip(shape, dims, strict=True))


def test_the_repository_holds_the_cpu_models_and_tensorrt_llm() -> None:
    held = {p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt")}
    assert held == {*CPU_MODELS, "tensorrt_llm", "minilm", "whisper"}


def test_the_embedding_model_carries_the_encoder_contract() -> None:
    config = parse(MODEL_REPOSITORY / "minilm" / "config.pbtxt")
    assert config.name == "minilm"
    contract = EncoderContract.from_config(config, "embed", None)
    assert contract.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert contract.id_type is np.int64
    assert (contract.output, contract.dim, contract.max_batch) == ("embeddings", 384, config.max_batch_size)
    assert EncoderContract.from_config(config, "embed", 16).max_batch == 16
    assert config.dynamic_batching is not None and all(i.allow_ragged_batch for i in config.input)


def test_the_whisper_model_carries_tensorrt_llm_whispers_names() -> None:
    config = parse(MODEL_REPOSITORY / "whisper" / "config.pbtxt")
    inputs = {i.name: kserve_datatype(i.data_type) for i in config.input}
    assert inputs == {"WAV": "FP32", "WAV_LENS": "INT32", "TEXT_PREFIX": "BYTES", "TEMPERATURE": "FP32"}
    assert {o.name: kserve_datatype(o.data_type) for o in config.output} == {"TRANSCRIPTS": "BYTES"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_config_carries_the_contract(path: Path) -> None:
    config = parse(path)
    assert config.name == path.parent.name  # Triton refuses a name other than the directory's
    contract = ModelContract.from_config(config)
    assert contract.decoupled and contract.batched
    assert {"output_ids", "sequence_length"} <= contract.outputs
    # a config that takes nothing but the required inputs still works
    for param in ("temperature", "top_p", "top_k", "seed", "min_tokens"):
        assert contract.supports(param), param


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_every_tensor_sent_is_declared_alike(path: Path, batched: bool) -> None:
    config = parse(path)
    if not batched:
        config.max_batch_size = 0
    contract = ModelContract.from_config(config)
    declared = {i.name: i for i in config.input}
    sent: set[str] = set()
    requests = [build_request(contract, "r", [5, 6, 7], s, 2, 0, VOCAB) for s in samplings(contract)]
    if "stop" in contract.inputs:
        requests.append(build_stop_request(contract, "r"))
    for req in requests:
        for tensor, raw in zip(req.inputs, req.raw_input_contents, strict=True):
            sent.add(tensor.name)
            spec = declared.get(tensor.name)
            assert spec is not None, f"{path.parent.name} does not declare {tensor.name}"
            assert dtype_name(spec.data_type) == "TYPE_" + tensor.datatype.replace("BYTES", "STRING"), tensor.name
            shape = list(tensor.shape)
            if batched:
                assert shape[0] == 1 <= config.max_batch_size, tensor.name
                shape = shape[1:]
            assert dims_match(shape, list(spec.dims)), f"{tensor.name}: sent {shape}, declared {list(spec.dims)}"
            if spec.HasField("reshape"):  # Triton checks that reshape keeps the element count
                assert math.prod(spec.reshape.shape) == math.prod(shape), tensor.name
            assert len(raw) == raw_size(tensor.datatype, math.prod(tensor.shape), raw), tensor.name
    assert set(REQUIRED_INPUTS) <= sent
    if path == GPU:  # TensorRT-LLM's config takes everything the gateway can send
        assert sent == set(INPUT_TENSORS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_inputs_the_gateway_may_leave_out_are_optional(path: Path) -> None:
    for tensor in parse(path).input:
        if tensor.name not in REQUIRED_INPUTS:
            assert tensor.optional, f"{path.parent.name}: {tensor.name} must be optional"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_outputs_are_shaped_as_the_parser_reads_them(path: Path) -> None:
    config = parse(path)
    outputs = {o.name: o for o in config.output}
    ids, length = outputs["output_ids"], outputs["sequence_length"]
    assert dtype_name(ids.data_type) == dtype_name(length.data_type) == "TYPE_INT32"
    assert list(ids.dims) == [-1, -1]  # [beam, tokens]
    assert list(length.dims) == [-1]  # [beam]
    batch = [1] if config.max_batch_size > 0 else []
    for beams in (1, 2):
        tokens = [11, 12, 13, 0] * beams  # padded past sequence_length
        resp = service_pb2.ModelInferResponse()
        resp.outputs.add(name="output_ids", datatype="INT32", shape=[*batch, beams, 4])
        resp.raw_output_contents.append(struct.pack(f"<{len(tokens)}i", *tokens))
        resp.outputs.add(name="sequence_length", datatype="INT32", shape=[*batch, beams])
        resp.raw_output_contents.append(struct.pack(f"<{beams}i", *[3] * beams))
        assert parse_tokens(resp) == [11, 12, 13]


def _signature(tensor: Any) -> tuple[object, ...]:
    """A declaration, name aside: datatype, dims, reshape and (inputs) the optional and ragged flags."""
    reshape = list(tensor.reshape.shape) if tensor.HasField("reshape") else None
    flags = (tensor.optional, tensor.allow_ragged_batch) if hasattr(tensor, "optional") else ()
    return (dtype_name(tensor.data_type), list(tensor.dims), reshape, *flags)


@pytest.mark.parametrize("name", CPU_MODELS)
def test_cpu_model_declares_its_tensors_as_tensorrt_llm_does(name: str) -> None:
    cpu, gpu = parse(MODEL_REPOSITORY / name / "config.pbtxt"), parse(GPU)
    gpu_inputs = {t.name: t for t in gpu.input}
    gpu_outputs = {t.name: t for t in gpu.output}
    for tensor in cpu.input:
        assert tensor.name in gpu_inputs, f"{name}: {tensor.name} is no TensorRT-LLM input"
        assert _signature(tensor) == _signature(gpu_inputs[tensor.name]), tensor.name
    for tensor in cpu.output:
        assert tensor.name in gpu_outputs, f"{name}: {tensor.name} is no TensorRT-LLM output"
        assert _signature(tensor) == _signature(gpu_outputs[tensor.name]), tensor.name
    assert cpu.model_transaction_policy.decoupled == gpu.model_transaction_policy.decoupled


def test_smollm2_declares_every_tensor_its_engine_honours() -> None:
    """The new ones too (penalties, bad words, bias, logprobs, logits, guided decoding), each as
    TensorRT-LLM declares it (test_cpu_model_declares_its_tensors_as_tensorrt_llm_does)."""
    config, gpu = parse(MODEL_REPOSITORY / "smollm2" / "config.pbtxt"), parse(GPU)
    assert {t.name for t in config.input} == SMOLLM2_INPUTS
    assert {t.name for t in config.output} == SMOLLM2_OUTPUTS
    gpu_tensors = {t.name: t for t in [*gpu.input, *gpu.output]}
    for tensor in [*config.input, *config.output]:
        assert _signature(tensor) == _signature(gpu_tensors[tensor.name]), tensor.name
    contract = ModelContract.from_config(config)
    for param in ("presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs"):
        assert contract.supports(param), param
    assert contract.supports("top_logprobs") and contract.supports("guided_decoding")
    assert contract.guided_decoding_backend == "llguidance"


def test_smollm2_engine_parameters() -> None:
    config = parse(MODEL_REPOSITORY / "smollm2" / "config.pbtxt")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["weights_dir"] == "weights"
    assert int(params["max_sequences"]) >= 1 and int(params["threads"]) >= 0 and int(params["prefill_chunk"]) >= 1
    assert not {"inter_threads", "intra_threads", "compute_type"} & params.keys()  # CTranslate2's, gone
    assert config.model_transaction_policy.decoupled and config.max_batch_size > 0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_logprob_outputs_are_shaped_as_the_parser_reads_them(path: Path) -> None:
    config = parse(path)
    outputs = {o.name: o for o in config.output}
    expected = {"output_log_probs": [-1, -1], "cum_log_probs": [-1], "generation_logits": [-1, -1, -1]}
    for name, dims in expected.items():  # [beam, tokens], [beam], [beam, tokens, vocab]
        if name in outputs:
            assert dtype_name(outputs[name].data_type) == "TYPE_FP32", name
            assert list(outputs[name].dims) == dims, name


def test_tensorrt_llm_config_settings() -> None:
    config = parse(GPU)
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.backend == "tensorrtllm"
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"].startswith("/models/tensorrt_llm/")
    # looked up without a default: a config without them fails to load
    assert {"tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"} <= params.keys()
    assert params["enable_kv_cache_reuse"] == "true" and params["exclude_input_in_output"] == "true"
    assert 0.0 < float(params["kv_cache_free_gpu_mem_fraction"]) <= 1.0
    assert 0 < int(params["cancellation_check_period_ms"]) <= 100
    assert params["batch_scheduler_policy"] in ("guaranteed_no_evict", "max_utilization")
    assert not [k for k, v in params.items() if "${" in v], "unfilled template placeholders"
    assert list(config.dynamic_batching.preferred_batch_size) == [config.max_batch_size]
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]


# fill_config.py: not a package, loaded from its path as the container runs it


@pytest.fixture(scope="module")
def fill_config() -> ModuleType:
    path = REPO / "deploy" / "tensorrt_llm" / "fill_config.py"
    spec = importlib.util.spec_from_file_location("fill_config", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(fill_config: ModuleType, out: Path, *extra: str) -> int:
    base = ["--output-repo", str(out), "--engine-dir", "/models/m/engine", "--tokenizer-dir", "/models/m/tok"]
    return int(fill_config.main([*base, *extra]))


def test_fill_config_sets_what_it_is_given(fill_config: ModuleType, tmp_path: Path) -> None:
    template = GPU.read_text()
    rc = _run(
        fill_config,
        tmp_path,
        *("--max-batch-size", "16", "--kv-cache-free-gpu-mem-fraction", "0.5", "--enable-kv-cache-reuse", "false"),
        *("--max-queue-delay-us", "100", "--max-queue-size", "128", "--cancellation-check-period-ms", "10"),
        *("--batch-scheduler-policy", "max_utilization", "--set", "gpu_device_ids=0,1"),
    )
    assert rc == 0
    assert (tmp_path / "tensorrt_llm" / "1").is_dir()
    out = parse(tmp_path / "tensorrt_llm" / "config.pbtxt")
    params = {k: v.string_value for k, v in out.parameters.items()}
    assert out.name == "tensorrt_llm" and out.max_batch_size == 16
    assert list(out.dynamic_batching.preferred_batch_size) == [16]
    assert out.dynamic_batching.max_queue_delay_microseconds == 100
    assert out.dynamic_batching.default_queue_policy.max_queue_size == 128
    assert params["gpt_model_path"] == "/models/m/engine" and params["tokenizer_dir"] == "/models/m/tok"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.5" and params["enable_kv_cache_reuse"] == "false"
    assert params["cancellation_check_period_ms"] == "10" and params["batch_scheduler_policy"] == "max_utilization"
    assert params["gpu_device_ids"] == "0,1"
    # the rest is the template's, and still the contract
    gpu = parse(GPU)
    assert params["gpt_model_type"] == "inflight_fused_batching" and out.backend == "tensorrtllm"
    assert [_signature(t) for t in out.input] == [_signature(t) for t in gpu.input]
    assert [t.name for t in out.input] == [t.name for t in gpu.input]
    assert ModelContract.from_config(out).inputs == ModelContract.from_config(gpu).inputs
    assert GPU.read_text() == template


def test_fill_config_keeps_the_template_values_not_given(fill_config: ModuleType, tmp_path: Path) -> None:
    assert _run(fill_config, tmp_path, "--model-name", "llama") == 0
    out, gpu = parse(tmp_path / "llama" / "config.pbtxt"), parse(GPU)
    assert out.name == "llama"
    assert out.max_batch_size == gpu.max_batch_size
    assert out.dynamic_batching == gpu.dynamic_batching
    for key in ("kv_cache_free_gpu_mem_fraction", "enable_kv_cache_reuse", "cancellation_check_period_ms"):
        assert out.parameters[key].string_value == gpu.parameters[key].string_value


def test_fill_config_legacy_names(fill_config: ModuleType, tmp_path: Path) -> None:
    # the same renames on both sides: what fill_config writes is what the gateway maps back
    assert {old: new for new, old in fill_config.LEGACY_NAMES.items()} == LEGACY_NAMES
    assert _run(fill_config, tmp_path, "--legacy-names") == 0
    out = parse(tmp_path / "tensorrt_llm" / "config.pbtxt")
    names = {t.name for t in out.input}
    assert {"random_seed", "min_length"} <= names and not {"seed", "min_tokens"} & names
    contract = ModelContract.from_config(out)
    assert contract.supports("seed") and contract.supports("min_tokens")
    req = build_request(contract, "r", [1], SAMPLINGS[0], 2, 0)
    assert {"random_seed", "min_length"} <= {t.name for t in req.inputs}


def test_fill_config_refuses_to_overwrite(fill_config: ModuleType, tmp_path: Path) -> None:
    template = GPU.read_text()
    assert _run(fill_config, MODEL_REPOSITORY, "--max-batch-size", "8", "--force") == 1  # the template itself
    assert GPU.read_text() == template
    assert _run(fill_config, tmp_path) == 0
    assert _run(fill_config, tmp_path, "--max-batch-size", "8") == 1  # exists, no --force
    assert parse(tmp_path / "tensorrt_llm" / "config.pbtxt").max_batch_size == parse(GPU).max_batch_size
    assert _run(fill_config, tmp_path, "--max-batch-size", "8", "--force") == 0
    assert parse(tmp_path / "tensorrt_llm" / "config.pbtxt").max_batch_size == 8


@pytest.mark.parametrize(
    "bad",
    [["--kv-cache-free-gpu-mem-fraction", "1.5"], ["--max-batch-size", "0"], ["--set", "novalue"]],
    ids=["fraction", "batch", "set"],
)
def test_fill_config_rejects_bad_values(fill_config: ModuleType, tmp_path: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _run(fill_config, tmp_path, *bad)
    assert exc.value.code == 2
    assert not (tmp_path / "tensorrt_llm").exists()
