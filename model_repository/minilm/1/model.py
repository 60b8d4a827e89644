"""Triton Python-backend model: an encoder ONNX model behind the gateway's embedding / score contract.

The work is gateway/embedded/encoder.py; this file reads the config's parameters, builds the Encoder,
and turns the list of requests the dynamic batcher hands over into one Encoder.run: each request's
rows ``[B_i, T_i]`` go in together (one forward pass), and each request gets its own rows back as
``embeddings`` ``[B_i, dim]`` (task embed) or ``logits`` ``[B_i, 1]`` (task score). A request with bad
tensors gets an error response of its own; the others still run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from gateway.embedded.encoder import INPUT_NAMES, POOLINGS, TASKS, Encoder, IntArray, Rows

log = logging.getLogger("minilm")
OUTPUTS = {"embed": "embeddings", "score": "logits"}
MODEL_FILE = "model.onnx"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        task = TASKS[_choice(params, "task", TASKS)]
        pooling = POOLINGS[_choice(params, "pooling", POOLINGS)]
        weights = Path(params.get("weights_dir", "weights"))
        if not weights.is_absolute():
            weights = Path(args["model_repository"]) / weights
        if not (weights / MODEL_FILE).is_file() or not (weights / "tokenizer.json").is_file():
            raise pb_utils.TritonModelException(
                f"no prepared model in {weights}: run `python -m gateway prepare-model` first"
            )
        self._output = OUTPUTS[task]
        declared = {o["name"]: o for o in config.get("output", [])}
        if self._output not in declared:
            raise pb_utils.TritonModelException(f"task {task} answers with {self._output}; the config lacks it")
        self._encoder = Encoder(
            weights / MODEL_FILE,
            task=task,
            pooling=pooling,
            normalize=params.get("normalize", "true").strip().lower() in ("1", "true", "yes"),
            threads=_int_param(params, "threads", 0, 0),
            vocab_size=Tokenizer.from_file(str(weights / "tokenizer.json")).get_vocab_size(with_added_tokens=True),
            max_length=_max_length(weights),
            max_batch_tokens=_int_param(params, "max_batch_tokens", 8192, 1),
        )
        width = self._warm_up()
        dims = [int(d) for d in declared[self._output].get("dims", [])]
        if dims != [width]:
            raise pb_utils.TritonModelException(f"the model gives {self._output} [{width}]; the config says {dims}")
        pb_utils.Logger.log_info(f"{config['name']}: task {task}, {weights / MODEL_FILE}, {self._output} [{width}]")

    def _warm_up(self) -> int:
        """One tiny run, so the first request does not pay ONNX Runtime's first call; the output's width."""
        row = np.array([[101, 102]], dtype=np.int64)
        out = self._encoder.run([(row, np.ones_like(row), np.zeros_like(row))])
        return int(out.shape[1])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, tuple[IntArray, IntArray, IntArray]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._encoder.check(_rows(request))))
            except ValueError as exc:
                responses[i] = _error(str(exc))
        if good:
            try:
                out = self._encoder.run([rows for _, rows in good])
            except Exception as exc:  # the model itself failed: every request of the batch learns why
                log.exception("batch of %d requests failed", len(good))
                for i, _ in good:
                    responses[i] = _error(f"inference failed: {exc}")
            else:
                start = 0
                for i, rows in good:
                    n = rows[0].shape[0]
                    tensor = pb_utils.Tensor(self._output, np.ascontiguousarray(out[start : start + n]))
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
                    start += n
        return responses


def _rows(request: Any) -> Rows:
    arrays = []
    for name in INPUT_NAMES:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise ValueError(f"{name} is required")
        arrays.append(tensor.as_numpy())
    return arrays[0], arrays[1], arrays[2]


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _max_length(weights: Path) -> int | None:
    """tokenizer_config.json's model_max_length: what the gateway truncates to, so the most a row may hold."""
    try:
        config = json.loads((weights / "tokenizer_config.json").read_text(encoding="utf-8"))
        return int(config["model_max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _choice(params: dict[str, str], name: str, allowed: tuple[str, ...]) -> int:
    """The index in ``allowed`` of parameter ``name`` (the first when unset)."""
    value = params.get(name, "").strip().lower() or allowed[0]
    if value not in allowed:
        raise pb_utils.TritonModelException(f"parameter {name} must be one of {', '.join(allowed)}, not {value!r}")
    return allowed.index(value)


def _int_param(params: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = params.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise pb_utils.TritonModelException(f"parameter {name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise pb_utils.TritonModelException(f"parameter {name} must be at least {minimum}, not {value}")
    return value
