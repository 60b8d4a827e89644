"""Embeddings: texts or token ids in, unit vectors out (OpenAI's /v1/embeddings, REST and gRPC alike)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gateway.auth.keys import Principal
from gateway.core.encode import Encoded, check_ids, encode, encoder_contract, fit, normalize
from gateway.core.job import Job
from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.limits.ratelimit import RateLimiter

EMBED = ("embed",)


async def embeddings(
    job: Job,
    principal: Principal,
    limiter: RateLimiter | None,
    inputs: list[str] | list[list[int]],
    dimensions: int | None = None,
    truncate: int | None = None,
) -> NDArray[np.float32]:
    """One unit vector per input, in order; ``dimensions`` truncates a Matryoshka model's vectors
    (and re-normalises them); ``truncate`` cuts inputs longer than that many tokens instead of a 400."""
    model = job.model
    contract = await encoder_contract(model)
    if dimensions is not None:
        full = contract.dim
        if not model.config.matryoshka and (full is None or dimensions != full):
            raise UnsupportedParameter(
                f"model '{model.id}' does not support 'dimensions' (it is not a Matryoshka model)"
                + (f"; its embeddings have {full} dimensions" if full else ""),
                param="dimensions",
            )
        if full is not None and dimensions > full:
            raise InvalidRequest(f"'dimensions' must be at most {full} for model '{model.id}'", param="dimensions")
    rows: list[Encoded]
    if inputs and isinstance(inputs[0], str):
        rows = await model.tokenizer.encode_inputs_async([t for t in inputs if isinstance(t, str)])
    else:
        ids = [t for t in inputs if isinstance(t, list)]
        check_ids(ids, model.tokenizer.vocab_size, "input")
        rows = [(row, [0] * len(row)) for row in ids]
    rows = fit(rows, model.context_length, model.tokenizer.special_frame(), truncate, "input")
    vectors = await encode(job, principal, limiter, contract, rows)
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = normalize(np.ascontiguousarray(vectors[:, :dimensions]))
    elif dimensions is not None and dimensions > vectors.shape[1]:
        raise InvalidRequest(
            f"'dimensions' must be at most {vectors.shape[1]} for model '{model.id}'", param="dimensions"
        )
    return vectors
