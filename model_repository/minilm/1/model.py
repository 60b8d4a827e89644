"""Triton Python-backend model: an encoder ONNX model behind the gateway's embedding / score contract.

The work is gateway/embedded/encoder.py; this file reads the config's parameters
(gateway/embedded/model_params.py), builds the Encoder, and turns the list of requests the dynamic
batcher hands over into one Encoder run: each request's rows ``[B_i, T_i]`` are checked once, then go
in together (one forward pass), and each request gets its own rows back as ``embeddings``
``[B_i, dim]`` (task embed) or ``logits`` ``[B_i, 1]`` (task score). A request with bad tensors gets
an INVALID_ARGUMENT error of its own; the others still run. A failure of the model itself answers
each request of the batch with INTERNAL.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from gateway.embedded.encoder import INPUT_NAMES, POOLINGS, TASKS, Block, Encoder, Rows
from gateway.embedded.model_params import ModelParams

log = logging.getLogger("minilm")
OUTPUTS = {"embed": "embeddings", "score": "logits"}
MODEL_FILE = "model.onnx"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = ModelParams(args)
        task = params.choice("task", TASKS)
        weights = params.weights_dir(MODEL_FILE, "tokenizer.json")
        self._output = OUTPUTS[task]
        declared = {o["name"]: o for o in params.config.get("output", [])}
        if self._output not in declared:
            raise pb_utils.TritonModelException(f"task {task} answers with {self._output}; the config lacks it")
        self._encoder = Encoder(
            weights / MODEL_FILE,
            task=task,
            pooling=params.choice("pooling", POOLINGS),
            normalize=params.flag("normalize", True),
            threads=params.integer("threads", 0, 0),
            vocab_size=Tokenizer.from_file(str(weights / "tokenizer.json")).get_vocab_size(with_added_tokens=True),
            max_length=_max_length(weights),
            max_batch_tokens=params.integer("max_batch_tokens", 8192, 1),
        )
        width = self._warm_up()
        dims = [int(d) for d in declared[self._output].get("dims", [])]
        if dims != [width]:
            raise pb_utils.TritonModelException(f"the model gives {self._output} [{width}]; the config says {dims}")
        name = params.config.get("name", "minilm")
        pb_utils.Logger.log_info(f"{name}: task {task}, {weights / MODEL_FILE}, {self._output} [{width}]")

    def _warm_up(self) -> int:
        """One tiny run, so the first request does not pay ONNX Runtime's first call; the output's width."""
        row = np.array([[101, 102]], dtype=np.int64)
        out = self._encoder.run([(row, np.ones_like(row), np.zeros_like(row))])
        return int(out.shape[1])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, Block]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._encoder.check(_rows(request))))
            except ValueError as exc:  # this request's tensors: refused alone, as the client's error
                responses[i] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
        if good:
            try:
                out = self._encoder.run_checked([block for _, block in good])
            except Exception as exc:  # the model itself failed: every request of the batch learns why
                log.exception("batch of %d requests failed", len(good))
                for i, _ in good:
                    responses[i] = _error(f"inference failed: {exc}", pb_utils.TritonError.INTERNAL)
            else:
                start = 0
                for i, block in good:
                    n = block.ids.shape[0]
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


def _error(message: str, code: Any) -> Any:
    """An error response: ``code`` INVALID_ARG (gRPC INVALID_ARGUMENT) for a bad request, INTERNAL
    (which the gateway takes for a broken server) for a model failure."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def _max_length(weights: Path) -> int | None:
    """tokenizer_config.json's model_max_length: the gateway's context length, so the most a row may hold."""
    try:
        config = json.loads((weights / "tokenizer_config.json").read_text(encoding="utf-8"))
        return int(config["model_max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
