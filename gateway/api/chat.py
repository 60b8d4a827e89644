"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json, sampling_input
from gateway.api.context import CONFIG, LIMITER, PLAN, REGISTRY, STARTED, now
from gateway.api.formats import ChatFormat
from gateway.api.respond import respond
from gateway.api.schema import ChatCompletionRequest, ChatMessage, NamedToolChoice
from gateway.auth.keys import Principal
from gateway.core.models import ModelRegistry
from gateway.core.plan import OutputShape, Plan, checked_shape, plan_chat
from gateway.core.types import Tool, ToolChoice
from gateway.errors import InvalidRequest
from gateway.limits.ratelimit import RateLimiter


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse(ChatCompletionRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    app = request.app
    plan = request[PLAN] = await chat_plan(body, principal_of(request), app[REGISTRY], app[LIMITER], request[STARTED])
    return await respond(request, chat_format(plan), plan, body)


async def chat_plan(
    body: ChatCompletionRequest,
    principal: Principal,
    registry: ModelRegistry,
    limiter: RateLimiter | None,
    started: float,
) -> Plan:
    """The plan of a chat request: the REST route's, and a batch line's (no limiter)."""
    return await plan_chat(
        principal,
        registry,
        body.model,
        [message_dict(m) for m in body.messages],
        body.n,
        sampling_input(body),
        limiter=limiter,
        started=started,
        shape=output_shape(body),
    )


def chat_format(plan: Plan) -> ChatFormat:
    return ChatFormat(plan.request_id, now(), plan.model.id, plan.model.tokenizer.piece)


def message_dict(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def output_shape(body: ChatCompletionRequest) -> OutputShape:
    """The request's response format and tools as the generate path takes them; the rules OpenAI
    applies across these fields are checked here, each error naming its parameter."""
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true", param="top_logprobs")
    tools = tuple(
        Tool(t.function.name, t.function.description or "", t.function.parameters or {}) for t in body.tools or ()
    )
    given = body.tool_choice
    if isinstance(given, NamedToolChoice):
        choice: ToolChoice | None = ToolChoice("named", given.function.name)
    else:
        choice = None if given is None else ToolChoice(given)
    return checked_shape(body.response_format_dict, tools, choice, body.parallel_tool_calls)
