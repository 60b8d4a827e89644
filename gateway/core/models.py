"""The served models: OpenAI id -> tokenizer, limits and the Triton model behind it."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from gateway.auth.keys import Principal
from gateway.config import ModelConfig
from gateway.engine.base import Engine
from gateway.engine.contract import ModelContract
from gateway.engine.upstreams import UpstreamGroup
from gateway.errors import ModelNotFound, WrongModelTask
from gateway.limits.admission import Admission
from gateway.text.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """How /v1/models, the gRPC ListModels and the wrong-task error describe what a model does."""

    kind: str  # /v1/models' `task`
    article: str  # "an embedding model"
    apis: tuple[str, ...]  # /v1/models' `capabilities`
    routes: str  # the error's "it serves ..."


TASKS: dict[str, TaskInfo] = {
    "generate": TaskInfo(
        "chat", "a text generation", ("chat", "completions", "tokenize"), "/v1/chat/completions and /v1/completions"
    ),
    "embed": TaskInfo(
        "embedding",
        "an embedding",
        ("embeddings", "rerank", "score", "tokenize"),
        "/v1/embeddings, /v1/rerank and /v1/score",
    ),
    "score": TaskInfo(
        "rerank", "a cross-encoder (scoring)", ("rerank", "score", "tokenize"), "/v1/rerank and /v1/score"
    ),
    "transcribe": TaskInfo(
        "transcription",
        "a transcription",
        ("audio.transcriptions", "audio.translations"),
        "/v1/audio/transcriptions and /v1/audio/translations",
    ),
}
# the tasks whose models have a text tokenizer clients may call /tokenize with
TOKENIZES = tuple(task for task, info in TASKS.items() if "tokenize" in info.apis)


@dataclass(slots=True)
class ServedModel:
    config: ModelConfig
    tokenizer: Tokenizer
    upstreams: UpstreamGroup
    context_length: int
    created: int
    admission: Admission

    @property
    def id(self) -> str:
        return self.config.id

    async def contract(self) -> ModelContract:
        return await self.upstreams.contract()

    async def ready(self) -> bool:
        return await self.upstreams.ready()


class ModelRegistry:
    def __init__(
        self,
        configs: list[ModelConfig],
        engine_for: Callable[[str], Engine],
        health_check_interval: float = 2.0,
        eject_after_failures: int = 3,
        probe_interval: float = 10.0,
        probe_timeout: float = 10.0,
    ) -> None:
        """``engine_for`` gives the engine of a Triton URL (one shared client per server)."""
        self._models: dict[str, ServedModel] = {}
        created = int(time.time())
        for cfg in configs:
            tokenizer = Tokenizer(cfg.tokenizer_dir)
            context = cfg.context_length or tokenizer.model_max_length or 2048
            admission = Admission(cfg.id, cfg.max_in_flight, cfg.max_queue, cfg.queue_timeout, cfg.batch_high_water)
            engines = [engine_for(url) for url in cfg.upstreams]
            group = UpstreamGroup(
                cfg.id,
                cfg.triton_model,
                engines,
                health_check_interval,
                eject_after_failures,
                probe_interval,
                probe_timeout,
                generates=cfg.task == "generate",
            )
            self._models[cfg.id] = ServedModel(cfg, tokenizer, group, context, created, admission)

    def start(self) -> None:
        """Start the upstreams' health checks (in the running event loop)."""
        for model in self._models.values():
            model.upstreams.start()

    async def close(self) -> None:
        for model in self._models.values():
            await model.upstreams.close()

    def get(self, model_id: str, principal: Principal, tasks: Collection[str] | None = None) -> ServedModel:
        """The model, if it exists and the caller may use it: 404 alike otherwise, so that a key
        cannot learn which models exist outside its scope. ``tasks``: what the API needs of it (400 if not)."""
        model = self._models.get(model_id)
        if model is None or not principal.may_use(model_id):
            raise ModelNotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.", param="model"
            )
        if tasks is not None and model.config.task not in tasks:
            info = TASKS[model.config.task]
            raise WrongModelTask(
                f"The model '{model_id}' is {info.article} model; it serves {info.routes}.",
                param="model",
            )
        return model

    def visible(self, principal: Principal) -> list[ServedModel]:
        return [m for m in self._models.values() if principal.models is None or m.id in principal.models]

    def models(self) -> Iterator[ServedModel]:
        return iter(self._models.values())
