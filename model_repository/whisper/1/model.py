"""Triton Python-backend model: Whisper base (CTranslate2, CPU) behind the tensor contract of
TensorRT-LLM's Whisper model on Triton (WAV, WAV_LENS, TEXT_PREFIX -> TRANSCRIPTS), plus TEMPERATURE.

The engine is gateway.embedded.whisper_runner; this file only turns Triton requests into its items
and its texts into responses. Each execute() gets the requests the dynamic batcher gathered, checks
each once (``WhisperRunner.check``, which parses its prefix) and makes one ``transcribe_checked`` call
of those that passed. A request that cannot be transcribed (a bad or too long prefix, too many
samples, a bad temperature) gets its own INVALID_ARGUMENT error; the others are answered. Should the
batch itself fail, each request is retried alone, so that one request's failure stays its own (an
INTERNAL error: the model failed, not the request).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from gateway.embedded.model_params import ModelParams
from gateway.embedded.whisper_runner import MAX_LENGTH, Checked, Transcription, WhisperRunner

log = logging.getLogger("whisper")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = ModelParams(args)
        self._runner = WhisperRunner(
            params.weights_dir("model.bin"),
            compute_type=params.text("compute_type", "int8"),
            threads=params.integer("threads", 0, 0),
            beam_size=params.integer("beam_size", 1, 1),
            max_length=params.integer("max_length", MAX_LENGTH, 2),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        checked: list[Checked] = []
        placed: list[int] = []
        for n, request in enumerate(requests):
            try:
                checked.append(self._runner.check(_item(request)))
            except ValueError as exc:  # this request's tensors: refused alone, as the client's error
                responses[n] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            placed.append(n)
        for n, outcome in zip(placed, self._transcribe(checked), strict=True):
            responses[n] = outcome
        return responses

    def _transcribe(self, checked: list[Checked]) -> list[Any]:
        """A response for each item: together if they can be, else each alone."""
        if not checked:
            return []
        try:
            return [_transcript(text) for text in self._runner.transcribe_checked(checked)]
        except Exception:
            if len(checked) == 1:
                log.exception("transcription failed")
                return [_error("transcription failed: see the server log", pb_utils.TritonError.INTERNAL)]
            log.exception("a batch of %d failed; transcribing each alone", len(checked))
        return [self._transcribe([item])[0] for item in checked]

    def finalize(self) -> None:
        del self._runner


def _item(request: Any) -> Transcription:
    wav = _array(request, "WAV")
    if wav is None:
        raise ValueError("WAV is required")
    samples = wav.reshape(-1).astype(np.float32, copy=False)
    lengths = _array(request, "WAV_LENS")
    if lengths is not None and lengths.size:
        valid = int(lengths.reshape(-1)[0])
        if not 0 <= valid <= samples.size:
            raise ValueError(f"WAV_LENS {valid} is not within WAV's {samples.size} samples")
        samples = samples[:valid]
    prefix = _array(request, "TEXT_PREFIX")
    if prefix is None or prefix.size == 0:
        raise ValueError("TEXT_PREFIX is required")
    raw = prefix.reshape(-1)[0]
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise ValueError("TEXT_PREFIX is not UTF-8") from None
    temperature = _array(request, "TEMPERATURE")
    value = float(temperature.reshape(-1)[0]) if temperature is not None and temperature.size else 0.0
    return Transcription(samples, text, value)


def _array(request: Any, name: str) -> np.ndarray[Any, Any] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _transcript(text: str) -> Any:
    out = np.array([[text.encode("utf-8")]], dtype=np.object_)  # [batch 1, 1]
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("TRANSCRIPTS", out)])


def _error(message: str, code: Any) -> Any:
    """An error response: ``code`` INVALID_ARG (gRPC INVALID_ARGUMENT) for a bad request, INTERNAL
    (which the gateway takes for a broken server) for a model failure."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
