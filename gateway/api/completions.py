"""POST /v1/completions."""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json, sampling_input
from gateway.api.context import CONFIG, LIMITER, PLAN, REGISTRY, STARTED, now
from gateway.api.formats import CompletionFormat
from gateway.api.respond import respond
from gateway.api.schema import CompletionRequest, Prompt
from gateway.auth.keys import Principal
from gateway.core.models import ModelRegistry
from gateway.core.plan import Plan, plan_completion
from gateway.core.plan import Prompt as PlanPrompt
from gateway.limits.ratelimit import RateLimiter


def _prompts(prompt: Prompt) -> list[PlanPrompt]:
    """OpenAI's four prompt forms: a string, strings, token ids, lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [[t for t in prompt if isinstance(t, int)]]
    return [p for p in prompt if isinstance(p, str | list)]


async def completions(request: web.Request) -> web.StreamResponse:
    body = parse(CompletionRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    app = request.app
    plan = request[PLAN] = await completion_plan(
        body, principal_of(request), app[REGISTRY], app[LIMITER], request[STARTED]
    )
    return await respond(request, completion_format(plan), plan, body)


async def completion_plan(
    body: CompletionRequest,
    principal: Principal,
    registry: ModelRegistry,
    limiter: RateLimiter | None,
    started: float,
) -> Plan:
    """The plan of a completions request: the REST route's, and a batch line's (no limiter)."""
    return await plan_completion(
        principal,
        registry,
        body.model,
        _prompts(body.prompt),
        body.n,
        body.echo,
        sampling_input(body),
        limiter=limiter,
        started=started,
        response_format=body.response_format_dict,
    )


def completion_format(plan: Plan) -> CompletionFormat:
    return CompletionFormat(plan.request_id, now(), plan.model.id, plan.echo, plan.model.tokenizer.piece)
