"""POST /v1/rerank (Cohere's and Jina's shape) and POST /v1/score (vLLM's)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json
from gateway.api.context import CONFIG, JOB, LIMITER, REGISTRY, STARTED, now
from gateway.api.retrieval_schema import RerankRequest, ScoreRequest
from gateway.core.job import start_job
from gateway.core.rerank import RERANK, pair_scores, ranked, score_pairs


async def rerank(request: web.Request) -> web.Response:
    body = parse(RerankRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    principal = principal_of(request)
    job = request[JOB] = start_job(principal, request.app[REGISTRY], body.model, RERANK, request[STARTED], "rerank")
    documents = body.texts()
    pairs = [(body.query, d) for d in documents]
    scores = await pair_scores(job, principal, request.app[LIMITER], pairs, body.truncate_prompt_tokens)
    results: list[dict[str, Any]] = []
    for index in ranked(scores, body.top_n):
        result: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
        if body.return_documents:
            result["document"] = {"text": documents[index]}
        results.append(result)
    document = {
        "id": job.request_id,
        "model": job.model.id,
        "results": results,
        "usage": {"prompt_tokens": job.stats.prompt_tokens, "total_tokens": job.stats.prompt_tokens},
    }
    return web.Response(body=orjson.dumps(document), content_type="application/json")


async def score(request: web.Request) -> web.Response:
    body = parse(ScoreRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    principal = principal_of(request)
    job = request[JOB] = start_job(principal, request.app[REGISTRY], body.model, RERANK, request[STARTED], "score")
    pairs = score_pairs(_texts(body.text_1), _texts(body.text_2))
    scores = await pair_scores(job, principal, request.app[LIMITER], pairs, body.truncate_prompt_tokens)
    document = {
        "id": job.request_id,
        "object": "list",
        "created": now(),
        "model": job.model.id,
        "data": [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(scores)],
        "usage": {"prompt_tokens": job.stats.prompt_tokens, "total_tokens": job.stats.prompt_tokens},
    }
    return web.Response(body=orjson.dumps(document), content_type="application/json")


def _texts(given: str | list[str]) -> list[str]:
    return [given] if isinstance(given, str) else given
