"""GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.context import REGISTRY
from gateway.core.models import ServedModel


def _card(model: ServedModel) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.config.owned_by}


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [_card(m) for m in request.app[REGISTRY].visible(principal_of(request))]}
    )


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(_card(request.app[REGISTRY].get(request.match_info["model_id"], principal_of(request))))
