"""Triton Python-backend model: a real small LM behind TensorRT-LLM's `tensorrt_llm` tensor contract.

Decoupled: every request runs on its own thread and streams one response per generated token
(``streaming`` true) or one response with every token (``streaming`` false), then a final flag with
no response, which Triton turns into an empty final response for clients that ask for one.
As TensorRT-LLM does, the end token is not part of the output and ``end_id`` of -1 never ends.

Sampling follows TensorRT-LLM: ``runtime_top_k`` 1 (or temperature 0) is greedy, 0 means no top-k
limit, ``runtime_top_p`` 0 or 1 means no nucleus limit. A request is cancelled between two tokens.
A request ends after a sequence of its ``stop_words_list``, which is the last thing it sends. A
request with the same id and ``stop`` true ends it between two tokens (TensorRT-LLM's in-band stop).

Seeds: CTranslate2 keeps one random generator per worker thread, seeded once from a global seed on
first use, so a seeded request gets a fresh generator (weights from memory, ~0.2 s) whose worker
takes the request's seed; the lock keeps two seeded starts from racing on the global seed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# CTranslate2's MKL int8 GEMM returns wrong results on some Xeon CPUs (seen on the 2-core
# development VM: greedy output turned to nonsense, while float32 and the oneDNN int8 path gave the
# reference text). Use the oneDNN path unless an operator chose otherwise; read at the first GEMM.
os.environ.setdefault("CT2_USE_MKL", "0")

import ctranslate2  # after the environment it reads
import numpy as np
import triton_python_backend_utils as pb_utils

log = logging.getLogger("smollm2")
_MODEL_FILES = ("model.bin", "config.json", "vocabulary.json")
_MAX_THREADS = 256


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        weights = params.get("weights_dir", "weights")
        if not os.path.isabs(weights):
            weights = os.path.join(args["model_repository"], weights)
        if not os.path.isfile(os.path.join(weights, "model.bin")):
            raise pb_utils.TritonModelException(
                f"no CTranslate2 model in {weights}: run `python -m gateway prepare-model` first"
            )
        self._gen_kwargs = {
            "device": "cpu",
            "compute_type": params.get("compute_type", "int8"),
            "inter_threads": int(params.get("inter_threads", "1")),
            "intra_threads": int(params.get("intra_threads", "0")),
        }
        self._files = {}
        for name in _MODEL_FILES:
            with open(os.path.join(weights, name), "rb") as f:
                self._files[name] = f.read()
        self._generator = self._new_generator(self._gen_kwargs)
        with open(os.path.join(weights, "vocabulary.json"), encoding="utf-8") as f:
            self._vocab: list[str] = json.load(f)
        self._seed_lock = threading.Lock()
        self._ids_lock = threading.Lock()
        self._live: set[str] = set()  # ids of the requests running, and those of them asked to stop
        self._stopped: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=_MAX_THREADS, thread_name_prefix="smollm2")

    def _new_generator(self, kwargs: dict[str, Any]) -> ctranslate2.Generator:
        return ctranslate2.Generator("smollm2", files=self._files, **kwargs)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            if _scalar(request, "stop", False):  # stop the running request of this id, if any
                with self._ids_lock:
                    if request.request_id() in self._live:
                        self._stopped.add(request.request_id())
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            try:
                job = _Job.from_request(request, len(self._vocab))
            except ValueError as exc:
                _fail(sender, str(exc))
                continue
            with self._ids_lock:
                self._live.add(job.request_id)
            self._pool.submit(self._run, job, sender)

    def _run(self, job: _Job, sender: Any) -> None:
        try:
            self._run_job(job, sender)
        finally:
            with self._ids_lock:
                self._live.discard(job.request_id)
                self._stopped.discard(job.request_id)

    def _run_job(self, job: _Job, sender: Any) -> None:
        try:
            if job.seed is None:
                self._generate(self._generator, job, sender, None)
            else:
                kwargs = dict(self._gen_kwargs, inter_threads=1)
                generator = self._new_generator(kwargs)
                try:
                    self._generate(generator, job, sender, job.seed)
                finally:
                    del generator
        except Exception as exc:
            log.exception("generation failed")
            _fail(sender, f"generation failed: {exc}")

    def _generate(self, generator: ctranslate2.Generator, job: _Job, sender: Any, seed: int | None) -> None:
        prompt = [self._vocab[i] for i in job.input_ids]
        steps = generator.generate_tokens(
            prompt,
            max_length=job.max_new,
            min_length=job.min_tokens,
            sampling_topk=job.top_k,
            sampling_topp=job.top_p,
            sampling_temperature=job.temperature,
            repetition_penalty=job.repetition_penalty,
            end_token=[job.end_id] if job.end_id >= 0 else [],
        )
        seeded = seed is not None
        if seeded:
            self._seed_lock.acquire()
            ctranslate2.set_random_seed(seed % (2**32))
        produced: list[int] = []
        recent: list[int] = []  # the last tokens, to match stop sequences
        keep = max((len(stop) for stop in job.stops), default=0)
        count = 0
        stopped_by = None
        try:
            for step in steps:
                if seeded:  # the worker has seeded its random generator: release the others
                    self._seed_lock.release()
                    seeded = False
                if job.request_id in self._stopped:
                    stopped_by = "(stop request)"
                elif sender.is_cancelled():
                    stopped_by = "(call cancelled)"
                if stopped_by is not None:
                    steps.close()
                    break
                token = step.token_id
                if token == job.end_id:
                    break
                count += 1
                if job.streaming:
                    sender.send(_response([token]))
                else:
                    produced.append(token)
                if keep:
                    recent.append(token)
                    del recent[:-keep]
                    if any(recent[-len(stop) :] == stop for stop in job.stops):
                        steps.close()
                        break
        finally:
            if seeded:
                self._seed_lock.release()
        if stopped_by is None and sender.is_cancelled():  # cancelled after its last token
            stopped_by = "(call cancelled)"
        if stopped_by is not None:
            # a line tests (and operators) can rely on: generation really stopped
            pb_utils.Logger.log_info(f"request {job.request_id!r} cancelled after {count} tokens {stopped_by}")
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        if not job.streaming:
            sender.send(_response(produced))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Job:
    __slots__ = (
        "end_id",
        "input_ids",
        "max_new",
        "min_tokens",
        "repetition_penalty",
        "request_id",
        "seed",
        "stops",
        "streaming",
        "temperature",
        "top_k",
        "top_p",
    )  # fmt: skip

    def __init__(self) -> None:
        self.request_id = ""
        self.input_ids: list[int] = []
        self.max_new = 16
        self.min_tokens = 0
        self.end_id = -1
        self.streaming = False
        self.top_k = 1
        self.top_p = 1.0
        self.temperature = 1.0
        self.repetition_penalty = 1.0
        self.seed: int | None = None
        self.stops: list[list[int]] = []

    @classmethod
    def from_request(cls, request: Any, vocab_size: int) -> _Job:
        job = cls()
        job.request_id = request.request_id()
        ids = _scalar_or_array(request, "input_ids")
        if ids is None:
            raise ValueError("input_ids is required")
        ids = np.asarray(ids).reshape(-1)
        length = _scalar(request, "input_lengths", len(ids))
        ids = ids[: int(length)]
        if len(ids) == 0:
            raise ValueError("input_ids is empty")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ValueError(f"input_ids out of range [0, {vocab_size})")
        job.input_ids = ids.tolist()
        job.max_new = int(_scalar(request, "request_output_len", 16))
        if job.max_new < 1:
            raise ValueError("request_output_len must be at least 1")
        job.min_tokens = max(0, int(_scalar(request, "min_tokens", 0)))
        job.end_id = int(_scalar(request, "end_id", -1))
        job.streaming = bool(_scalar(request, "streaming", False))
        temperature = float(_scalar(request, "temperature", 1.0))
        top_k = int(_scalar(request, "runtime_top_k", 0))
        top_p = float(_scalar(request, "runtime_top_p", 0.0))
        if temperature <= 0.0 or top_k == 1:
            job.top_k, job.temperature = 1, 1.0
        else:
            job.top_k, job.temperature = max(top_k, 0), temperature
        job.top_p = top_p if 0.0 < top_p < 1.0 else 1.0
        job.repetition_penalty = float(_scalar(request, "repetition_penalty", 1.0))
        seed = _scalar(request, "seed", None)
        job.seed = None if seed is None or job.top_k == 1 else int(seed)
        job.stops = _stop_words(request)
        return job


def _scalar_or_array(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request: Any, name: str, default: Any) -> Any:
    value = _scalar_or_array(request, name)
    return default if value is None else value.reshape(-1)[0].item()


def _stop_words(request: Any) -> list[list[int]]:
    """TensorRT-LLM's ``stop_words_list`` [2, L]: ids, then each sequence's end offset (-1 padded)."""
    rows = _scalar_or_array(request, "stop_words_list")
    if rows is None:
        return []
    rows = rows.reshape(2, -1)
    ids, offsets = rows[0].tolist(), rows[1].tolist()
    seqs, start = [], 0
    for end in offsets:
        if end < 0:
            break
        if end > start:
            seqs.append(ids[start:end])
        start = end
    return seqs


def _response(tokens: list[int]) -> Any:
    ids = np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1)
    length = np.asarray([[len(tokens)]], dtype=np.int32)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor("output_ids", ids), pb_utils.Tensor("sequence_length", length)]
    )


def _fail(sender: Any, message: str) -> None:
    sender.send(
        pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    )
