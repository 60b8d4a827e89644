"""The served models: OpenAI id -> tokenizer, limits and the Triton model behind it."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.auth.keys import NO_KEY, Principal
from gateway.config import ModelConfig, UpstreamGroupConfig
from gateway.engine.base import Engine
from gateway.engine.contract import ModelContract
from gateway.engine.routing import GroupInfo
from gateway.engine.upstreams import UpstreamGroup
from gateway.errors import ModelNotFound, Unauthorized, WrongModelTask
from gateway.limits.admission import Admission
from gateway.text.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gateway.auth.access import Access


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
    access: Access | None = None  # a deployment's endpoints and ACLs (None: a configured model, open to keys)

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
        upstream_groups: Sequence[UpstreamGroupConfig] = (),
    ) -> None:
        """``engine_for`` gives the engine of a Triton URL (one shared client per server);
        ``upstream_groups``: the named groups models may list (``upstream_groups``)."""
        self._models: dict[str, ServedModel] = {}
        self._groups = {g.name: g for g in upstream_groups}
        self._views: dict[str, tuple[ServedModel, ServedModel]] = {}  # "id:policy" -> (base, view)
        self._engine_for = engine_for
        self._checks = (health_check_interval, eject_after_failures, probe_interval, probe_timeout)
        self._tokenizers: dict[Path, Tokenizer] = {}
        self._started = False
        for cfg in configs:
            served = self.build(cfg)
            self._models[cfg.id] = served

    def tokenizer(self, directory: Path) -> Tokenizer:
        """One tokenizer per directory, shared by every model that names it."""
        tokenizer = self._tokenizers.get(directory)
        if tokenizer is None:
            tokenizer = self._tokenizers[directory] = Tokenizer(directory)
        return tokenizer

    def build(
        self, cfg: ModelConfig, access: Access | None = None, upstreams: UpstreamGroup | None = None
    ) -> ServedModel:
        """A served model for ``cfg`` (not yet registered); ``upstreams``: reuse a running group."""
        tokenizer = self.tokenizer(cfg.tokenizer_dir)
        context = cfg.context_length or tokenizer.model_max_length or 2048
        admission = Admission(cfg.id, cfg.max_in_flight, cfg.max_queue, cfg.queue_timeout, cfg.batch_high_water)
        if upstreams is None:
            interval, eject_after, probe_interval, probe_timeout = self._checks
            urls, groups = self._placement(cfg)
            upstreams = UpstreamGroup(
                cfg.id,
                cfg.triton_model,
                [self._engine_for(url) for url in urls],
                interval,
                eject_after,
                probe_interval,
                probe_timeout,
                generates=cfg.task == "generate",
                groups=groups,
                routing=cfg.routing,
                prefix_block_tokens=cfg.prefix_block_tokens,
            )
        return ServedModel(cfg, tokenizer, upstreams, context, int(time.time()), admission, access)

    def _placement(self, cfg: ModelConfig) -> tuple[list[str], list[GroupInfo] | None]:
        """The model's Triton URLs, and with ``upstream_groups`` each one's group (in order of preference;
        a server in two of its groups belongs to the first)."""
        if not cfg.upstream_groups:
            return cfg.upstreams, None
        placed: dict[str, GroupInfo] = {}
        for name in cfg.upstream_groups:
            group = self._groups.get(name)
            if group is None:
                raise ValueError(f"model {cfg.id!r}: unknown upstream group {name!r}")
            info = GroupInfo(name, group.price_input_per_1k + group.price_output_per_1k, group.capacity)
            for url in group.urls:
                if not cfg.triton_urls or url in cfg.triton_urls:  # triton_urls: only these of the groups'
                    placed.setdefault(url, info)
        return list(placed), list(placed.values())

    def add(self, model: ServedModel) -> ServedModel | None:
        """Serve ``model`` (replacing one of the same id, which is returned: its requests run on)."""
        previous = self._models.get(model.id)
        self._models[model.id] = model
        if self._started and (previous is None or previous.upstreams is not model.upstreams):
            model.upstreams.start()
        return previous

    def lookup(self, model_id: str) -> ServedModel | None:
        """The model served under exactly ``model_id`` (no access checks: for the operator's side)."""
        return self._models.get(model_id)

    def remove(self, model_id: str) -> ServedModel | None:
        """Stop serving ``model_id``: new requests get 404; those running keep their model."""
        return self._models.pop(model_id, None)

    def start(self) -> None:
        """Start the upstreams' health checks (in the running event loop)."""
        self._started = True
        for model in self._models.values():
            model.upstreams.start()

    async def close(self) -> None:
        for model in self._models.values():
            await model.upstreams.close()

    def get(self, model_id: str, principal: Principal, tasks: Collection[str] | None = None) -> ServedModel:
        """The model, if it exists and the caller may use it: 404 alike otherwise, so that a key
        cannot learn which models exist outside its scope. ``tasks``: what the API needs of it (400 if not)."""
        base_id, model = model_id, self._models.get(model_id)
        if model is None and ":" in model_id:  # model:policy, of a model whose own id has no such suffix
            base_id = model_id.rpartition(":")[0]
            model = self._routed(model_id, principal)
        if model is None or not principal.may_use(base_id):
            if not principal.authenticated:  # no key: it may not learn which models exist either
                raise Unauthorized(NO_KEY)
            raise ModelNotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.", param="model"
            )
        if model.access is not None:
            model.access.admit(base_id, principal)  # 401, 403, or 404 alike on the wrong listener
        if tasks is not None and model.config.task not in tasks:
            info = TASKS[model.config.task]
            raise WrongModelTask(
                f"The model '{model_id}' is {info.article} model; it serves {info.routes}.",
                param="model",
            )
        return model

    def _routed(self, model_id: str, principal: Principal) -> ServedModel | None:
        """``model:policy``: the model routed by that policy, a view made once (usage, metrics, admission
        and access stay the model's). None when there is no such model; when there is and the caller
        may use it, 404 naming its policies if the policy is unknown."""
        base_id, _, policy = model_id.rpartition(":")
        base = self._models.get(base_id)
        if base is None:
            return None
        cached = self._views.get(model_id)
        if cached is not None and cached[0] is base:
            return cached[1]
        upstreams = base.upstreams.routed(policy)
        if upstreams is None:
            if not principal.may_use(base_id):
                return None
            if base.access is not None:
                base.access.admit(base_id, principal)
            choices = ", ".join(f"'{base_id}:{p}'" for p in base.upstreams.policies)
            raise ModelNotFound(
                f"The model '{model_id}' does not exist: the routing policies of '{base_id}' are {choices}.",
                param="model",
            )
        view = replace(base, upstreams=upstreams)
        self._views[model_id] = (base, view)
        return view

    def visible(self, principal: Principal) -> list[ServedModel]:
        return [
            m
            for m in self._models.values()
            if (principal.models is None or m.id in principal.models)
            and (m.access is None or m.access.shows(principal))
        ]

    def models(self) -> Iterator[ServedModel]:
        return iter(list(self._models.values()))  # a copy: deployments come and go while callers await
