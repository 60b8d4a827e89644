"""Triton Python-backend model: Whisper base (CTranslate2, CPU) behind the tensor contract of
TensorRT-LLM's Whisper model on Triton (WAV, WAV_LENS, TEXT_PREFIX -> TRANSCRIPTS), plus TEMPERATURE.

The engine is gateway.embedded.whisper_runner; this file only turns Triton requests into its items
and its texts into responses. Each execute() gets the requests the dynamic batcher gathered and makes
one ``transcribe_batch`` call of them. A request that cannot be transcribed (a bad prefix, too many
samples, a bad temperature) gets its own error response; the others are answered. Should the batch
itself fail, each request is retried alone, so that one request's failure stays its own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from gateway.embedded.whisper_runner import MAX_LENGTH, Transcription, WhisperRunner

log = logging.getLogger("whisper")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        weights = Path(params.get("weights_dir", "weights"))
        if not weights.is_absolute():
            weights = Path(args["model_repository"]) / weights
        if not (weights / "model.bin").is_file():
            raise pb_utils.TritonModelException(
                f"no prepared Whisper model in {weights}: run `python -m gateway prepare-model` first"
            )
        self._runner = WhisperRunner(
            weights,
            compute_type=params.get("compute_type", "").strip() or "int8",
            threads=_int_param(params, "threads", 0, 0),
            beam_size=_int_param(params, "beam_size", 1, 1),
            max_length=_int_param(params, "max_length", MAX_LENGTH, 2),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        items: list[Transcription] = []
        placed: list[int] = []
        for n, request in enumerate(requests):
            try:
                item = _item(request)
                self._runner.check(item)
            except ValueError as exc:
                responses[n] = _error(str(exc))
                continue
            items.append(item)
            placed.append(n)
        for n, outcome in zip(placed, self._transcribe(items), strict=True):
            responses[n] = outcome
        return responses

    def _transcribe(self, items: list[Transcription]) -> list[Any]:
        """A response for each item: together if they can be, else each alone."""
        if not items:
            return []
        try:
            return [_transcript(text) for text in self._runner.transcribe_batch(items)]
        except Exception:
            if len(items) == 1:
                log.exception("transcription failed")
                return [_error("transcription failed: see the server log")]
            log.exception("a batch of %d failed; transcribing each alone", len(items))
        return [self._transcribe([item])[0] for item in items]

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


def _array(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _transcript(text: str) -> Any:
    out = np.array([[text.encode("utf-8")]], dtype=np.object_)  # [batch 1, 1]
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("TRANSCRIPTS", out)])


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _int_param(params: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = params.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise pb_utils.TritonModelException(f"parameter {name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise pb_utils.TritonModelException(f"parameter {name} must be at least {minimum}, not {value}")
    return value
