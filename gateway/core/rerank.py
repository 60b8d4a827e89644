"""Relevance of documents to a query (/v1/rerank, /v1/score): by a cross-encoder (task ``score``:
one logit per pair, through a sigmoid), or by an embedding model (task ``embed``: the cosine of the
two texts' embeddings). Inputs longer than the model's context are truncated (as Cohere's API does
by default); the special tokens that frame them are kept."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from gateway.auth.keys import Principal
from gateway.core.encode import encode, encoder_contract, fit
from gateway.core.job import Job
from gateway.errors import InvalidRequest
from gateway.limits.ratelimit import RateLimiter

RERANK = ("score", "embed")


async def pair_scores(
    job: Job,
    principal: Principal,
    limiter: RateLimiter | None,
    pairs: list[tuple[str, str]],
    truncate: int | None = None,
) -> NDArray[np.float32]:
    """The relevance in [0, 1] (cross-encoder) or [-1, 1] (cosine) of each (query, document) pair."""
    model = job.model
    tokenizer = model.tokenizer
    contract = await encoder_contract(model)
    cap = min(truncate, model.context_length) if truncate else model.context_length
    if model.config.task == "score":
        rows = await tokenizer.encode_inputs_async(pairs)
        rows = fit(rows, model.context_length, tokenizer.special_frame(), cap, "documents")
        logits = await encode(job, principal, limiter, contract, rows)
        scores: NDArray[np.float32] = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return scores
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))  # each distinct text embedded once
    at = {text: i for i, text in enumerate(texts)}
    rows = await tokenizer.encode_inputs_async(texts)
    rows = fit(rows, model.context_length, tokenizer.special_frame(), cap, "documents")
    vectors = await encode(job, principal, limiter, contract, rows)
    left = vectors[[at[a] for a, _ in pairs]]
    right = vectors[[at[b] for _, b in pairs]]
    cosine: NDArray[np.float32] = np.einsum("ij,ij->i", left, right).astype(np.float32)
    return cosine


def ranked(scores: NDArray[np.float32], top_n: int | None = None) -> list[int]:
    """The indices of ``scores``, best first (equal scores keep their order), at most ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    return order[:top_n] if top_n else order


def score_pairs(text_1: Sequence[str], text_2: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs of a score request (vLLM's rule): one ``text_1`` against each of ``text_2``, or
    ``text_1[i]`` with ``text_2[i]``."""
    if len(text_1) == 1:
        return [(text_1[0], text) for text in text_2]
    if len(text_1) != len(text_2):
        raise InvalidRequest("'text_1' must be one text, or as many texts as 'text_2'", param="text_1")
    return list(zip(text_1, text_2, strict=True))
