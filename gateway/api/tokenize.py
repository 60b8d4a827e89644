"""POST /tokenize and /detokenize (vLLM's shapes), also under /v1/."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json
from gateway.api.chat import message_dict
from gateway.api.context import CONFIG, REGISTRY
from gateway.api.retrieval_schema import DetokenizeRequest, TokenizeRequest
from gateway.core.models import TOKENIZES
from gateway.errors import InvalidRequest
from gateway.text.tokenizer import INLINE_CHARS


async def tokenize(request: web.Request) -> web.Response:
    body = parse(TokenizeRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    model = request.app[REGISTRY].get(body.model, principal_of(request), TOKENIZES)
    tokenizer = model.tokenizer
    if body.messages is not None:  # rendered and encoded exactly as a chat completion's prompt
        ids = await tokenizer.encode_chat([message_dict(m) for m in body.messages])
    else:
        prompt = body.prompt or ""
        if len(prompt) <= INLINE_CHARS:
            ids = tokenizer.encode_text(prompt, body.add_special_tokens)
        else:  # off the event loop, through the entry point that drops the GIL
            ids = await tokenizer.encode_text_async(prompt, body.add_special_tokens)
    document: dict[str, Any] = {"count": len(ids), "max_model_len": model.context_length, "tokens": ids}
    if body.return_token_strs:
        document["token_strs"] = [tokenizer.token_str(i) for i in ids]
    return web.Response(body=orjson.dumps(document), content_type="application/json")


async def detokenize(request: web.Request) -> web.Response:
    body = parse(DetokenizeRequest, await read_json(request, request.app[CONFIG].max_body_bytes))
    tokenizer = request.app[REGISTRY].get(body.model, principal_of(request), TOKENIZES).tokenizer
    vocab = tokenizer.vocab_size
    if any(t >= vocab for t in body.tokens):
        raise InvalidRequest(f"token ids must be in [0, {vocab})", param="tokens")
    return web.Response(body=orjson.dumps({"prompt": tokenizer.decode(body.tokens)}), content_type="application/json")
