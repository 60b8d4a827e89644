"""One batch line run as its REST route runs it: the route's own planning, the one generate (or
embed) path, the route's response body. Differences: no rate limiter (batch work is not held to
the per-minute limits), and the upstream slot is taken in the batch class (behind interactive
requests, see :mod:`gateway.limits.admission`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from gateway.api.chat import chat_format, chat_plan
from gateway.api.completions import completion_format, completion_plan
from gateway.api.embeddings import embedding_document
from gateway.api.formats import ResponseFormat
from gateway.api.retrieval_schema import EmbeddingRequest
from gateway.api.schema import ChatCompletionRequest, CompletionRequest
from gateway.auth.keys import Principal
from gateway.batches.lines import validate_body
from gateway.core.embed import EMBED
from gateway.core.generate import collect
from gateway.core.halt import guarded
from gateway.core.job import start_job
from gateway.core.models import ModelRegistry
from gateway.core.plan import Plan

# told the line's upstream request id as the line is sent upstream (planned and admitted)
Dispatched = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    body: dict[str, Any]  # what the REST route returns (embeddings: numpy rows, see embedding_document)
    model: str
    prompt_tokens: int
    completion_tokens: int


async def execute(
    endpoint: str, body: dict[str, Any], principal: Principal, registry: ModelRegistry, dispatched: Dispatched
) -> Outcome:
    """The line's response body; a failure raises the gateway error the REST route would answer with."""
    request = validate_body(endpoint, body)
    return await _RUNS[endpoint](request, principal, registry, dispatched)


async def _embeddings(
    request: BaseModel, principal: Principal, registry: ModelRegistry, dispatched: Dispatched
) -> Outcome:
    assert isinstance(request, EmbeddingRequest)
    job = start_job(principal, registry, request.model, EMBED, time.monotonic(), "embd")
    job.stats.batch = True
    dispatched(job.request_id)
    document = await embedding_document(job, principal, None, request)
    return Outcome(document, job.model.id, job.stats.prompt_tokens, 0)


async def _generated(plan: Plan, fmt: ResponseFormat, dispatched: Dispatched) -> Outcome:
    plan.stats.batch = True
    dispatched(plan.request_id)
    # in a task of its own, as the REST route: stopping the runner halts the models in-band
    outputs, usage = await guarded(plan.halt, collect(plan))
    return Outcome(fmt.whole(outputs, usage), plan.model.id, usage.prompt_tokens, usage.completion_tokens)


async def _chat(request: BaseModel, principal: Principal, registry: ModelRegistry, dispatched: Dispatched) -> Outcome:
    assert isinstance(request, ChatCompletionRequest)
    plan = await chat_plan(request, principal, registry, None, time.monotonic())
    return await _generated(plan, chat_format(plan), dispatched)


async def _completions(
    request: BaseModel, principal: Principal, registry: ModelRegistry, dispatched: Dispatched
) -> Outcome:
    assert isinstance(request, CompletionRequest)
    plan = await completion_plan(request, principal, registry, None, time.monotonic())
    return await _generated(plan, completion_format(plan), dispatched)


_RUNS: dict[str, Callable[[BaseModel, Principal, ModelRegistry, Dispatched], Awaitable[Outcome]]] = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completions,
    "/v1/embeddings": _embeddings,
}
