"""Triton Python-backend model: a real small LM behind TensorRT-LLM's `tensorrt_llm` tensor contract.

The engine is gateway/embedded/lm: a CausalLM (the GGUF's weights as an ONNX Runtime graph with a
KV-cache slot per sequence) driven by a Scheduler, whose own thread batches every running sequence
into one decode step (TensorRT-LLM's inflight batching in miniature). This file only turns requests
into the scheduler's jobs and its chunks into responses.

Decoupled: a request streams one response per generated token (``streaming`` true) or one response
with every token (``streaming`` false), then a final flag with no response, which Triton turns into
an empty final response for clients that ask for one. As TensorRT-LLM does, the end token is not part
of the output and ``end_id`` -1 (or none) never ends. A request ends after a sequence of its
``stop_words_list``, which is the last thing it sends. A request with the same id and ``stop`` true
ends it between two tokens (TensorRT-LLM's in-band stop); so does a cancelled call. Either is logged
as "request 'id' cancelled after N tokens (stop request)" / "(call cancelled)".

Sampling follows TensorRT-LLM: ``runtime_top_k`` 1 (or temperature 0) is greedy, 0 means no top-k
limit, ``runtime_top_p`` 0 or 1 means no nucleus limit. ``return_log_probs`` adds output_log_probs
and cum_log_probs, ``return_generation_logits`` the processed logits of every token. Guided decoding
(llguidance) takes TensorRT-LLM's guide types: json, json_schema, regex, ebnf_grammar (Lark syntax).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from gateway.embedded.lm.grammar import GrammarCompiler
from gateway.embedded.lm.jobs import Chunk, End, Job, Reason
from gateway.embedded.lm.runner import CausalLM
from gateway.embedded.lm.sampling import SamplingSpec
from gateway.embedded.lm.scheduler import Scheduler
from gateway.embedded.model_params import PREPARE_HINT, ModelParams

log = logging.getLogger("smollm2")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = ModelParams(args)
        weights = params.weights_dir("tokenizer.json")
        max_sequences = params.integer("max_sequences", 8, 1)
        threads = params.integer("threads", 0, 0)
        prefill_chunk = params.integer("prefill_chunk", 256, 1)
        int8 = params.flag("int8_activations", False)
        try:
            self._lm = CausalLM(weights, max_sequences=max_sequences, threads=threads, int8_activations=int8)
        except FileNotFoundError as exc:
            raise pb_utils.TritonModelException(f"no engine in {weights} ({exc}): {PREPARE_HINT}") from exc
        self._vocab = self._lm.vocab_size
        _warm_up(self._lm)
        compiler = GrammarCompiler(weights / "tokenizer.json", _eos_ids(weights))
        self._scheduler = Scheduler(
            self._lm,
            compiler,
            max_sequences=max_sequences,
            prefill_chunk=prefill_chunk,
            log_line=pb_utils.Logger.log_info,
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                if _scalar(request, "stop", False):  # stop the running request of this id, if any
                    self._scheduler.stop(request.request_id())
                    sender.send(flags=FINAL)
                    continue
                self._scheduler.submit(self._job(request, _Sink(sender)))
            except ValueError as exc:  # a bad value, an unknown guide type, a guide that does not compile
                _fail(sender, str(exc))
            except Exception as exc:
                log.exception("request %r refused", request.request_id())
                _fail(sender, f"generation failed: {exc}")

    def _job(self, request: Any, sink: _Sink) -> Job:
        vocab = self._vocab
        ids = _array(request, "input_ids")
        if ids is None:
            raise ValueError("input_ids is required")
        ids = ids.reshape(-1)
        length = int(_scalar(request, "input_lengths", len(ids)))
        ids = ids[: max(length, 0)]
        if len(ids) == 0:
            raise ValueError("input_ids is empty")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"input_ids out of range [0, {vocab})")
        max_new = int(_scalar(request, "request_output_len", 16))
        if max_new < 1:
            raise ValueError("request_output_len must be at least 1")
        end_id = int(_scalar(request, "end_id", -1))
        if end_id >= vocab:
            raise ValueError(f"end_id {end_id} out of range [0, {vocab})")
        _scalar(request, "pad_id", 0)  # accepted, nothing to pad: every response is one beam
        temperature = _number(request, "temperature", 1.0, minimum=0.0)
        top_k = int(_scalar(request, "runtime_top_k", 0))
        if top_k < 0:
            raise ValueError("runtime_top_k must be >= 0")
        top_p = _number(request, "runtime_top_p", 0.0, minimum=0.0)
        if top_p > 1.0:
            raise ValueError("runtime_top_p must be in [0, 1]")
        repetition_penalty = _number(request, "repetition_penalty", 1.0)
        if repetition_penalty <= 0.0:
            raise ValueError("repetition_penalty must be > 0")
        min_tokens = int(_scalar(request, "min_tokens", 0))
        if min_tokens < 0:
            raise ValueError("min_tokens must be >= 0")
        seed = _scalar(request, "seed", None)
        greedy = temperature <= 0.0 or top_k == 1
        sampling = SamplingSpec(
            temperature=0.0 if greedy else temperature,
            top_k=top_k,
            top_p=top_p if 0.0 < top_p < 1.0 else 1.0,
            seed=None if seed is None else int(seed),
            repetition_penalty=repetition_penalty,
            presence_penalty=_number(request, "presence_penalty", 0.0),
            frequency_penalty=_number(request, "frequency_penalty", 0.0),
            min_tokens=min_tokens,
            end_ids=(end_id,) if end_id >= 0 else (),
            embedding_bias=_embedding_bias(request, vocab),
            bad_words=_word_list(request, "bad_words_list"),
        )
        return Job(
            request_id=request.request_id(),
            prompt=ids.tolist(),
            max_new_tokens=max_new,
            sink=sink,
            sampling=sampling,
            streaming=bool(_scalar(request, "streaming", False)),
            stop_words=_word_list(request, "stop_words_list"),
            guide=_guide(request),
            want_logprobs=bool(_scalar(request, "return_log_probs", False)),
            want_logits=bool(_scalar(request, "return_generation_logits", False)),
        )

    def finalize(self) -> None:
        self._scheduler.close()


class _Sink:
    """The scheduler's output for one request, as Triton responses on its decoupled sender."""

    __slots__ = ("_sender",)

    def __init__(self, sender: Any) -> None:
        self._sender = sender

    def emit(self, chunk: Chunk) -> None:
        self._sender.send(_response(chunk))

    def finish(self, end: End) -> None:
        if end.reason is Reason.ERROR:
            _fail(self._sender, f"generation failed: {end.error}")
        else:
            self._sender.send(flags=FINAL)

    def cancelled(self) -> bool:
        return bool(self._sender.is_cancelled())


def _warm_up(lm: CausalLM) -> None:
    """One prefill and one decode step, so the first request does not pay ONNX Runtime's first runs."""
    slot = lm.open()
    try:
        logits = lm.prefill(slot, [0, 0])
        lm.decode([slot], [int(np.argmax(logits))])
    finally:
        lm.close(slot)


def _eos_ids(weights: Path) -> list[int]:
    """The end token of tokenizer_config.json, as an id of tokenizer.json (the grammar's end)."""
    config = json.loads((weights / "tokenizer_config.json").read_text(encoding="utf-8"))
    eos = config.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if not eos:
        return []
    tokenizer = json.loads((weights / "tokenizer.json").read_text(encoding="utf-8"))
    for added in tokenizer.get("added_tokens", []):
        if added.get("content") == eos:
            return [int(added["id"])]
    vocab = tokenizer.get("model", {}).get("vocab", {})
    return [int(vocab[eos])] if isinstance(vocab, dict) and eos in vocab else []


def _array(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request: Any, name: str, default: Any) -> Any:
    value = _array(request, name)
    if value is None or value.size == 0:
        return default
    return value.reshape(-1)[0].item()


def _number(request: Any, name: str, default: float, minimum: float | None = None) -> float:
    value = float(_scalar(request, name, default))
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}")
    return value


def _word_list(request: Any, name: str) -> tuple[tuple[int, ...], ...]:
    """TensorRT-LLM's word lists [2, L] (stop_words_list, bad_words_list): ids, then each sequence's
    end offset (-1 padded)."""
    rows = _array(request, name)
    if rows is None or rows.size == 0:
        return ()
    if rows.size % 2:
        raise ValueError(f"{name} must have two rows of equal length")
    rows = rows.reshape(2, -1)
    ids, offsets = rows[0].tolist(), rows[1].tolist()
    seqs: list[tuple[int, ...]] = []
    start = 0
    for end in offsets:
        if end < 0:
            break
        if end > len(ids):
            raise ValueError(f"{name}: offset {end} past its {len(ids)} ids")
        if end > start:
            seqs.append(tuple(ids[start:end]))
        start = end
    return tuple(seqs)


def _embedding_bias(request: Any, vocab: int) -> np.ndarray | None:
    """[vocab] added to the logits (none when absent or empty, as TensorRT-LLM's preprocessing sends it)."""
    bias = _array(request, "embedding_bias")
    if bias is None or bias.size == 0:
        return None
    bias = bias.reshape(-1).astype(np.float32)
    if bias.size != vocab:
        raise ValueError(f"embedding_bias has {bias.size} values; the vocabulary has {vocab}")
    if np.isnan(bias).any() or np.isposinf(bias).any():
        raise ValueError("embedding_bias must hold numbers or -inf")
    return bias


def _text(request: Any, name: str) -> str | None:
    """A STRING [1] tensor (a numpy object array of bytes) as text; None when absent."""
    value = _array(request, name)
    if value is None or value.size == 0:
        return None
    item = value.reshape(-1)[0]
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name} is not UTF-8") from None
    return str(item)


def _guide(request: Any) -> tuple[str, str] | None:
    guide_type = _text(request, "guided_decoding_guide_type")
    guide = _text(request, "guided_decoding_guide")
    if not guide_type:
        if guide:
            raise ValueError("guided_decoding_guide needs a guided_decoding_guide_type")
        return None
    if guide is None and guide_type != "json":
        raise ValueError(f"guided_decoding_guide is required for guide type {guide_type!r}")
    return guide_type, guide or ""


def _response(chunk: Chunk) -> Any:
    """output_ids [1, 1, n] and sequence_length [1, 1] (batch, beam), plus what the request asked for."""
    n = len(chunk.tokens)
    tensors = [
        pb_utils.Tensor("output_ids", np.asarray(chunk.tokens, dtype=np.int32).reshape(1, 1, n)),
        pb_utils.Tensor("sequence_length", np.asarray([[n]], dtype=np.int32)),
    ]
    if chunk.logprobs is not None:
        logprobs = np.asarray(chunk.logprobs, dtype=np.float32).reshape(1, 1, n)
        cum = np.asarray([[chunk.cum_logprob or 0.0]], dtype=np.float32)
        tensors += [pb_utils.Tensor("output_log_probs", logprobs), pb_utils.Tensor("cum_log_probs", cum)]
    if chunk.logits is not None:
        logits = np.ascontiguousarray(chunk.logits, dtype=np.float32).reshape(1, 1, *chunk.logits.shape)
        tensors.append(pb_utils.Tensor("generation_logits", logits))
    return pb_utils.InferenceResponse(output_tensors=tensors)


def _fail(sender: Any, message: str) -> None:
    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)
