"""GET /v1/models and GET /v1/models/{id}: OpenAI's model object, plus what each model serves."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.context import REGISTRY
from gateway.core.models import TASKS, ServedModel


def _card(model: ServedModel) -> dict[str, Any]:
    task = model.config.task
    info = TASKS[task]
    # OpenAI's model object has no such fields: vLLM's and Scaleway's clients read them to tell an
    # embedding model from a chat model
    card: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.config.owned_by,
        "task": info.kind,
        "capabilities": list(info.apis),
    }
    if task != "transcribe":
        card["max_model_len"] = model.context_length
    if task == "embed":
        card["rerank_method"] = "embedding-cosine"  # no cross-encoder: relevance is the embeddings' cosine
        card["matryoshka"] = model.config.matryoshka
    elif task == "score":
        card["rerank_method"] = "cross-encoder"
    return card


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [_card(m) for m in request.app[REGISTRY].visible(principal_of(request))]}
    )


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(_card(request.app[REGISTRY].get(request.match_info["model_id"], principal_of(request))))
