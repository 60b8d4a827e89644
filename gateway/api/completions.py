"""POST /v1/completions."""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json, sampling_input
from gateway.api.context import CONFIG, LIMITER, PLAN, REGISTRY, STARTED, now
from gateway.api.formats import CompletionFormat
from gateway.api.respond import respond
from gateway.api.schema import CompletionRequest, Prompt
from gateway.core.plan import Prompt as PlanPrompt
from gateway.core.plan import plan_completion


def _prompts(prompt: Prompt) -> list[PlanPrompt]:
    """OpenAI's four prompt forms: a string, strings, token ids, lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [[t for t in prompt if isinstance(t, int)]]
    return [p for p in prompt if isinstance(p, str | list)]


async def completions(request: web.Request) -> web.StreamResponse:
    body = parse(CompletionRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    plan = await plan_completion(
        principal_of(request),
        request.app[REGISTRY],
        body.model,
        _prompts(body.prompt),
        body.n,
        body.echo,
        sampling_input(body),
        limiter=request.app[LIMITER],
        started=request[STARTED],
        response_format=body.response_format_dict,
    )
    request[PLAN] = plan
    fmt = CompletionFormat(plan.request_id, now(), plan.model.id, plan.echo, plan.model.tokenizer.piece)
    return await respond(request, fmt, plan, body)
