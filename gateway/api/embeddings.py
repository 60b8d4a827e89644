"""POST /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from numpy.typing import NDArray

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json
from gateway.api.context import CONFIG, JOB, LIMITER, REGISTRY, STARTED
from gateway.api.retrieval_schema import EmbeddingRequest
from gateway.auth.keys import Principal
from gateway.core.embed import EMBED, embeddings
from gateway.core.job import Job, start_job
from gateway.limits.ratelimit import RateLimiter


async def create_embeddings(request: web.Request) -> web.Response:
    body = parse(EmbeddingRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    principal = principal_of(request)
    job = request[JOB] = start_job(principal, request.app[REGISTRY], body.model, EMBED, request[STARTED], "embd")
    document = await embedding_document(job, principal, request.app[LIMITER], body)
    return web.Response(body=orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")


async def embedding_document(
    job: Job, principal: Principal, limiter: RateLimiter | None, body: EmbeddingRequest
) -> dict[str, Any]:
    """The response body of an embeddings request: the REST route's, and a batch line's (no limiter).
    Its vectors are numpy rows: dump it with ``orjson.OPT_SERIALIZE_NUMPY``."""
    vectors = await embeddings(job, principal, limiter, body.inputs(), body.dimensions, body.truncate_prompt_tokens)
    tokens = job.stats.prompt_tokens
    return {
        "object": "list",
        "data": _data(vectors, body.encoding_format == "base64"),
        "model": job.model.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _data(vectors: NDArray[np.float32], as_base64: bool) -> list[dict[str, object]]:
    if as_base64:  # float32 little-endian bytes, as OpenAI's SDK decodes them
        rows: list[object] = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in vectors]
    else:
        rows = list(vectors)
    return [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
