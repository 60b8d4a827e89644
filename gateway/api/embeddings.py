"""POST /v1/embeddings."""

from __future__ import annotations

import base64

import numpy as np
import orjson
from aiohttp import web
from numpy.typing import NDArray

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json
from gateway.api.context import CONFIG, JOB, LIMITER, REGISTRY, STARTED
from gateway.api.retrieval_schema import EmbeddingRequest
from gateway.core.embed import EMBED, embeddings
from gateway.core.job import start_job


async def create_embeddings(request: web.Request) -> web.Response:
    body = parse(EmbeddingRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    principal = principal_of(request)
    job = request[JOB] = start_job(principal, request.app[REGISTRY], body.model, EMBED, request[STARTED], "embd")
    vectors = await embeddings(
        job, principal, request.app[LIMITER], body.inputs(), body.dimensions, body.truncate_prompt_tokens
    )
    tokens = job.stats.prompt_tokens
    document = {
        "object": "list",
        "data": _data(vectors, body.encoding_format == "base64"),
        "model": job.model.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return web.Response(body=orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")


def _data(vectors: NDArray[np.float32], as_base64: bool) -> list[dict[str, object]]:
    if as_base64:  # float32 little-endian bytes, as OpenAI's SDK decodes them
        rows: list[object] = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in vectors]
    else:
        rows = list(vectors)
    return [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
