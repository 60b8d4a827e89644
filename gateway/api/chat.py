"""POST /v1/chat/completions."""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json, sampling_input
from gateway.api.context import CONFIG, LIMITER, PLAN, REGISTRY, STARTED, now
from gateway.api.formats import ChatFormat
from gateway.api.respond import respond
from gateway.api.schema import ChatCompletionRequest
from gateway.core.plan import plan_chat


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse(ChatCompletionRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    plan = await plan_chat(
        principal_of(request),
        request.app[REGISTRY],
        body.model,
        messages,
        body.n,
        sampling_input(body),
        limiter=request.app[LIMITER],
        started=request[STARTED],
    )
    request[PLAN] = plan
    fmt = ChatFormat(plan.request_id, now(), plan.model.id)
    return await respond(request, fmt, plan, stream=body.stream, include_usage=body.include_usage)
