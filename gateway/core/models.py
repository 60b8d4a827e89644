"""The served models: OpenAI id -> tokenizer, limits and the Triton model behind it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.auth.keys import Principal
from gateway.config import ModelConfig
from gateway.engine.base import Engine
from gateway.engine.contract import ModelContract
from gateway.errors import ModelNotFound
from gateway.limits.admission import Admission
from gateway.text.tokenizer import Tokenizer


@dataclass(slots=True)
class ServedModel:
    config: ModelConfig
    tokenizer: Tokenizer
    client: Engine
    context_length: int
    created: int
    admission: Admission

    @property
    def id(self) -> str:
        return self.config.id

    async def contract(self) -> ModelContract:
        return await self.client.contract(self.config.triton_model)

    async def ready(self) -> bool:
        return await self.client.model_ready(self.config.triton_model)


class ModelRegistry:
    def __init__(self, configs: list[ModelConfig], engine_for: Callable[[str], Engine]) -> None:
        """``engine_for`` gives the engine of a Triton URL (one shared client per server)."""
        self._models: dict[str, ServedModel] = {}
        created = int(time.time())
        for cfg in configs:
            tokenizer = Tokenizer(cfg.tokenizer_dir)
            context = cfg.context_length or tokenizer.model_max_length or 2048
            admission = Admission(cfg.id, cfg.max_in_flight, cfg.max_queue, cfg.queue_timeout)
            self._models[cfg.id] = ServedModel(cfg, tokenizer, engine_for(cfg.triton_url), context, created, admission)

    def get(self, model_id: str, principal: Principal) -> ServedModel:
        """The model, if it exists (404) and the caller may use it (403)."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
        principal.check_model(model_id)
        return model

    def visible(self, principal: Principal) -> list[ServedModel]:
        return [m for m in self._models.values() if principal.models is None or m.id in principal.models]

    def models(self) -> Iterator[ServedModel]:
        return iter(self._models.values())
