"""POST /v1/chat/completions."""

from __future__ import annotations

from aiohttp import web

from gateway.api.body import parse, read_json, sampling_of
from gateway.api.context import CONFIG, REGISTRY, new_id, now
from gateway.api.formats import ChatFormat
from gateway.api.respond import respond
from gateway.api.schema import ChatCompletionRequest
from gateway.core.types import Choice


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = parse(ChatCompletionRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    model = request.app[REGISTRY].get(body.model)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt_ids = model.tokenizer.encode(model.tokenizer.apply_chat_template(messages))
    sampling = await sampling_of(
        body,
        model,
        prompt_tokens=len(prompt_ids),
        max_tokens=body.token_limit,
        default_max_tokens=model.config.default_max_tokens,
        max_tokens_param="max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
        prompt_param="messages",
    )
    choices = [
        Choice(index=i, prompt_ids=prompt_ids, seed=None if body.seed is None else body.seed + i) for i in range(body.n)
    ]
    request_id = new_id("chatcmpl")
    return await respond(
        request,
        ChatFormat(request_id, now(), model.id),
        model,
        request_id,
        choices,
        sampling,
        stream=body.stream,
        include_usage=body.include_usage,
        prompt_tokens=len(prompt_ids),
    )
