"""POST /v1/completions."""

from __future__ import annotations

from aiohttp import web

from gateway.api.body import parse, read_json, sampling_of
from gateway.api.context import CONFIG, REGISTRY, new_id, now
from gateway.api.formats import CompletionFormat
from gateway.api.respond import respond
from gateway.api.schema import CompletionRequest
from gateway.core.models import ServedModel
from gateway.core.types import Choice
from gateway.errors import InvalidRequest

# OpenAI's legacy completions API generates 16 tokens when max_tokens is not given
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def _prompts(model: ServedModel, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    tokenizer = model.tokenizer
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(p) for p in prompt]  # type: ignore[arg-type]
    prompts = [[p for p in prompt if isinstance(p, int)]] if isinstance(prompt[0], int) else _token_lists(prompt)
    vocab = tokenizer.vocab_size
    for ids in prompts:
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
    return prompts


def _token_lists(prompt: list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    return [list(p) for p in prompt if isinstance(p, list)]


async def completions(request: web.Request) -> web.StreamResponse:
    body = parse(CompletionRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    model = request.app[REGISTRY].get(body.model)
    prompts = _prompts(model, body.prompt)
    if min(len(p) for p in prompts) == 0:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    sampling = await sampling_of(
        body,
        model,
        prompt_tokens=max(len(p) for p in prompts),
        max_tokens=body.max_tokens,
        default_max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS,
        prompt_param="prompt",
    )
    choices: list[Choice] = []
    echo: list[str] = []
    for p, ids in enumerate(prompts):
        text = model.tokenizer.decode(ids) if body.echo else ""
        for i in range(body.n):
            index = p * body.n + i
            seed = None if body.seed is None else body.seed + i
            choices.append(Choice(index=index, prompt_ids=ids, seed=seed))
            echo.append(text)
    request_id = new_id("cmpl")
    return await respond(
        request,
        CompletionFormat(request_id, now(), model.id, echo if body.echo else None),
        model,
        request_id,
        choices,
        sampling,
        stream=body.stream,
        include_usage=body.include_usage,
        prompt_tokens=sum(len(p) for p in prompts),
    )
