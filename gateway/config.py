"""Gateway configuration: one TOML file validated with pydantic, every field documented.

Precedence: a CLI flag, then its environment variable, then the file, then the default. The
embedded default (the CPU models in a tritonserver the gateway launches) needs no file at all.
A file that declares ``[[models]]`` serves those and launches nothing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_TRITON_MODEL = "smollm2"
SYNTHETIC_MODEL_ID = "synthetic"
SYNTHETIC_TRITON_MODEL = "synthetic"
EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
EMBEDDING_TRITON_MODEL = "minilm"
TRANSCRIPTION_MODEL_ID = "whisper-base"
TRANSCRIPTION_TRITON_MODEL = "whisper"
# OpenAI id -> Triton model, of the embedded CPU Triton (the only models it loads)
EMBEDDED_MODELS = {
    DEFAULT_MODEL_ID: DEFAULT_TRITON_MODEL,
    SYNTHETIC_MODEL_ID: SYNTHETIC_TRITON_MODEL,
    EMBEDDING_MODEL_ID: EMBEDDING_TRITON_MODEL,
    TRANSCRIPTION_MODEL_ID: TRANSCRIPTION_TRITON_MODEL,
}
EMBEDDED_TRITON_MODELS = tuple(EMBEDDED_MODELS.values())

# what a model does, and so which APIs it serves (each tensor contract is documented with its Triton model)
Task = Literal["generate", "embed", "score", "transcribe"]


class ModelConfig(BaseModel):
    """One OpenAI model id served by one Triton model."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="the OpenAI `model` name clients send")
    task: Task = Field(
        default="generate",
        description="generate: chat and completions (TensorRT-LLM's token contract); embed: /v1/embeddings, and"
        " /v1/rerank by cosine similarity; score: a cross-encoder, /v1/rerank and /v1/score; transcribe:"
        " /v1/audio/transcriptions (a Whisper model)",
    )
    triton_url: str | None = Field(default=None, description="Triton gRPC host:port (one server)")
    triton_urls: list[str] = Field(
        default_factory=list,
        description="several Triton servers serving this model: each request goes to the healthy one with the"
        " fewest requests in flight",
    )
    upstream_groups: list[str] = Field(
        default_factory=list,
        description="named upstream groups ([[upstream_groups]]) serving this model, in order of preference: a"
        " request goes to the first group with an available upstream that is not saturated, else the next;"
        " `model:fastest`, `model:cheapest` and `model:<group>` route by those policies instead",
    )
    routing: Literal["least_in_flight", "prefix"] = Field(
        default="least_in_flight",
        description="least_in_flight: the available upstream with the fewest requests in flight; prefix: prompts"
        " sharing a long token prefix go to the upstream that served it last while it is not overloaded"
        " (KV-cache reuse), else least_in_flight",
    )
    prefix_block_tokens: int = Field(
        default=64, ge=8, description="prefix routing: prompts are matched in blocks of this many tokens"
    )
    triton_model: str = Field(description="model name in Triton's repository")
    tokenizer_dir: Path = Field(description="directory with tokenizer.json and tokenizer_config.json")
    context_length: int | None = Field(
        default=None, ge=1, description="prompt + output limit; default: the tokenizer's"
    )
    max_output_tokens: int = Field(default=4096, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(default=1024, ge=1, description="chat output limit when the request sets none")
    owned_by: str = "triton"
    tool_parser: Literal["hermes", "llama3_json", "generic"] | None = Field(
        default=None,
        description="how the model writes tool calls: hermes (<tool_call>{...}</tool_call>, Qwen/Hermes), "
        'llama3_json ({"name", "parameters"}), generic (tools described in the system prompt, calls in '
        "hermes markup held by the grammar); default: hermes when the chat template renders tools, else generic",
    )
    pooling: Literal["mean", "cls"] = Field(
        default="mean",
        description="embed, when the Triton model returns last_hidden_state instead of pooled embeddings: how the"
        " gateway pools the tokens (then L2-normalises)",
    )
    matryoshka: bool = Field(
        default=False,
        description="embed: the model was trained for truncated embeddings, so `dimensions` may ask for fewer",
    )
    max_batch: int | None = Field(
        default=None,
        ge=1,
        description="embed/score: inputs per Triton request (default: the model's max_batch_size); larger"
        " requests are split and the parts sent concurrently",
    )
    infer_timeout: float = Field(
        default=120.0,
        gt=0,
        description="embed/score/transcribe: seconds one Triton call (a batch, a 30-second window) may take,"
        " queueing included; then 504",
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="requests (for unary models: Triton calls) sent upstream at once (unset: no cap)",
    )
    max_queue: int = Field(default=0, ge=0, description="requests that may wait for a slot; more get 503")
    queue_timeout: float = Field(default=5.0, gt=0, description="seconds a request may wait for a slot")
    batch_high_water: int | None = Field(
        default=None,
        ge=1,
        description="batch lines start only while fewer requests (interactive and batch) are in flight and no"
        " interactive request waits; default: max_in_flight less a quarter (at least 1), or 4 without a cap",
    )
    first_token_timeout: float = Field(
        default=60.0, gt=0, description="seconds Triton may take to a request's first response; then 504"
    )
    idle_timeout: float = Field(
        default=30.0, gt=0, description="seconds a stream may then go without a response from Triton; then 504"
    )
    price_input_per_1k: float = Field(
        default=0.0, ge=0, description="price of 1,000 input (prompt) tokens in GET /v1/usage; batch lines: half"
    )
    price_output_per_1k: float = Field(
        default=0.0, ge=0, description="price of 1,000 output (completion) tokens in GET /v1/usage; batch lines: half"
    )

    @model_validator(mode="after")
    def _one_way_to_name_upstreams(self) -> ModelConfig:
        if self.triton_url and (self.triton_urls or self.upstream_groups):
            raise ValueError("set one of triton_url, triton_urls and upstream_groups (or triton_urls within groups)")
        if len(set(self.triton_urls)) != len(self.triton_urls):
            raise ValueError("triton_urls: a server is listed twice")
        return self

    @property
    def upstreams(self) -> list[str]:
        """The Triton servers this model names itself (default: 127.0.0.1:8001); with ``upstream_groups``
        only ``triton_urls`` (the groups' servers: :meth:`GatewayConfig.urls_of`)."""
        if self.upstream_groups:
            return list(self.triton_urls)
        return self.triton_urls or [self.triton_url or "127.0.0.1:8001"]


class UpstreamGroupConfig(BaseModel):
    """Triton servers of one kind (a node type: a GPU model, a region, a provider), named for routing."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the group's name: `model:<name>` pins it")
    urls: list[str] = Field(min_length=1, description="Triton gRPC host:port of each server")
    price_input_per_1k: float = Field(
        default=0.0, ge=0, description="`model:cheapest` prefers the group with the lowest input + output price"
    )
    price_output_per_1k: float = Field(default=0.0, ge=0, description="see price_input_per_1k")
    capacity: int | None = Field(
        default=None,
        ge=1,
        description="requests in flight per server (counted per model) at which it is saturated: a model's next"
        " group is tried first",
    )


class LimitsConfig(BaseModel):
    """Per key (or project) and model. Unset: unlimited."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1, description="requests started per minute")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="prompt + completion tokens per minute (prompt + max_tokens reserved up front)"
    )
    max_concurrent: int | None = Field(default=None, ge=1, description="requests in flight at once")


class ProjectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        description="also the base path /{id}/v1/... (not `admin` or `inference`: the operator API's paths)",
    )
    models: list[str] | None = Field(default=None, description="models its keys may use (unset: all)")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="shared by all of its keys")

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, project_id: str) -> str:
        if project_id in ("admin", "inference"):
            raise ValueError(f"{project_id!r} is reserved: /{project_id}/... is the operator API")
        return project_id


class KeyConfig(BaseModel):
    """An API key, stored only as the SHA-256 digest of the key (``python -m gateway keys create``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-f0-9]{8,32}$", description="the key's public id (part of the key)")
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$", description="hex SHA-256 of the whole key")
    project: str = Field(description="the project the key belongs to")
    name: str = Field(default="", description="a label for logs and metrics")
    models: list[str] | None = Field(default=None, description="models this key may use (unset: the project's)")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="this key's own limits")
    admin: bool = Field(default=False, description="may read every project's usage (GET /v1/usage); else a normal key")


_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#\s]+$")  # an Origin header's form: no path, no query


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    max_audio_bytes: int = Field(
        default=25 * 1024 * 1024, ge=1024, description="larger audio uploads get 413 (OpenAI's limit: 25 MB)"
    )
    max_audio_seconds: float = Field(default=3600.0, gt=0, description="longer recordings get 400")
    triton_timeout: float = Field(default=5.0, gt=0, description="seconds for Triton health/config calls")
    triton_streams: int = Field(
        default=4,
        ge=0,
        le=64,
        description="shared ModelStreamInfer streams per Triton server for models with an in-band stop (TensorRT-LLM):"
        " a request is one message on one, not a gRPC call of its own; 0: a call per request",
    )
    health_check_interval: float = Field(
        default=2.0, gt=0, description="seconds between active health checks of each upstream (server + model ready)"
    )
    probe_interval: float = Field(
        default=10.0,
        gt=0,
        description="an upstream that completed no request for this long is probed with a 1-token generation",
    )
    probe_timeout: float = Field(
        default=10.0, gt=0, description="seconds that probe generation may take before the upstream is unhealthy"
    )
    eject_after_failures: int = Field(
        default=3, ge=1, description="consecutive failed requests that take an upstream out until it checks healthy"
    )
    grpc_host: str = Field(default="127.0.0.1", description="the gRPC API's listen address")
    grpc_port: int | None = Field(default=50051, ge=0, le=65535, description="None: no gRPC API")
    drain_timeout: float = Field(default=30.0, ge=0, description="SIGTERM: seconds in-flight requests may finish")
    limits_db: Path | None = Field(
        default=None, description="SQLite file for limit state shared by worker processes (--workers sets one)"
    )
    limits_redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db for limit state shared by several machines (wins over limits_db)",
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("GATEWAY_DATA_DIR") or REPO_ROOT / ".data"),
        description="durable state: the usage ledger, uploaded files, batches (GATEWAY_DATA_DIR; a volume in Docker)",
    )
    usage_db: Path | None = Field(
        default=None, description="the usage ledger's SQLite file (default: data_dir/usage.sqlite), shared by --workers"
    )
    max_file_bytes: int = Field(
        default=200 * 1024 * 1024, ge=1024, description="larger uploads to /v1/files get 413 (streamed to disk)"
    )
    batch_concurrency: int = Field(default=4, ge=1, description="lines of a batch each gateway process runs at once")
    files_s3_url: str | None = Field(
        default=None,
        description="endpoint of the S3-compatible store of file contents, e.g. http://127.0.0.1:9000 (default: AWS)",
    )
    files_s3_bucket: str | None = Field(
        default=None,
        description="set: file contents go to this bucket instead of data_dir/files (credentials: the standard AWS"
        " environment variables, AWS_PROFILE or boto3's other sources)",
    )
    files_s3_prefix: str = Field(default="gateway/", description="what the keys of file contents start with")
    files_s3_region: str = Field(default="us-east-1", description="the bucket's region")
    batches_redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db for the catalog of files and batches and their leases, shared by several"
        " gateway replicas (default: limits_redis_url; neither: a SQLite file in data_dir)",
    )
    upstream_groups: list[UpstreamGroupConfig] = Field(
        default_factory=list, description="named groups of Triton servers that models may list in preference order"
    )
    admin_api: bool = Field(
        default=True,
        description="serve the operator API under /admin/v1 (admin keys only; with auth off, loopback callers only)",
    )
    deployments_redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db holding the deployments shared by several gateway replicas, with change"
        " notification (default: a SQLite file in data_dir)",
    )
    reconcile_interval: float = Field(
        default=5.0, gt=0, description="seconds between checks that every deployment is loaded where it should be"
    )
    private_host: str | None = Field(
        default=None, description="a second REST listener for private endpoints (e.g. an address on a private network)"
    )
    private_port: int | None = Field(default=None, ge=0, le=65535, description="the private listener's port")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="CIDRs of reverse proxies whose X-Forwarded-For names the client (for deployment ACLs)",
    )
    models: list[ModelConfig] = Field(default_factory=list, description="empty: the embedded CPU models")
    projects: list[ProjectConfig] = Field(default_factory=list)
    keys: list[KeyConfig] = Field(default_factory=list, description="none: auth is off")
    keys_file: Path | None = Field(
        default=None, description="a TOML file whose [[keys]] are added to these (e.g. a mounted Kubernetes Secret)"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='origins (scheme://host[:port]) whose pages may call the API from a browser, or ["*"] for'
        " any; empty: CORS off (no CORS headers at all). Credentials are never allowed: keys go in Authorization",
    )
    access_log_probes: bool = Field(
        default=True, description="false: /health, /ready and /metrics requests are left out of the access log"
    )

    def urls_of(self, model: ModelConfig) -> list[str]:
        """The Triton servers of ``model``: its own, or its groups' (in preference order; with
        ``triton_urls`` too, only those of the groups' servers)."""
        if not model.upstream_groups:
            return model.upstreams
        groups = {g.name: g for g in self.upstream_groups}
        urls = dict.fromkeys(url for name in model.upstream_groups for url in groups[name].urls)
        return [u for u in urls if not model.triton_urls or u in model.triton_urls]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        normalised = [o.strip().rstrip("/").lower() for o in origins]
        for origin in normalised:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path) or *")
        if "*" in normalised and len(normalised) > 1:
            raise ValueError("* allows every origin: list it alone")
        return normalised

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, proxies: list[str]) -> list[str]:
        networks = []
        for proxy in proxies:
            try:
                networks.append(str(ipaddress.ip_network(proxy.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"trusted_proxies: {proxy!r} is not an IP address or a CIDR network") from None
        return networks

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        projects = {p.id for p in self.projects}
        models = {m.id for m in self.models}
        for i, key in enumerate(self.keys):
            if key.project not in projects:
                raise ValueError(f"keys.{i}.project: unknown project {key.project!r}")
        for i, project in enumerate(self.projects):
            for m in project.models or ():
                if models and m not in models:
                    raise ValueError(f"projects.{i}.models: unknown model {m!r}")
        groups = {g.name for g in self.upstream_groups}
        if len(groups) != len(self.upstream_groups):
            raise ValueError("upstream_groups: two groups share a name")
        for group in self.upstream_groups:
            if group.name in ("fastest", "cheapest"):
                raise ValueError(f"upstream_groups: {group.name!r} is a routing policy's name (model:{group.name})")
        for i, model in enumerate(self.models):
            for g in model.upstream_groups:
                if g not in groups:
                    raise ValueError(f"models.{i}.upstream_groups: unknown group {g!r}")
            if model.upstream_groups and set(model.triton_urls) - set(self.urls_of(model)):
                raise ValueError(f"models.{i}.triton_urls: a server in none of its upstream_groups")
        if (self.private_host is None) != (self.private_port is None):
            raise ValueError("private_host and private_port: set both or neither")
        if len({k.id for k in self.keys}) != len(self.keys):
            raise ValueError("keys: two keys share an id")
        return self


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


def load_config(path: Path | None, overrides: dict[str, Any]) -> GatewayConfig:
    """The file's settings (if any) under the given overrides (CLI flags and environment)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    keys_file = data.get("keys_file")
    if keys_file:
        try:
            extra = tomllib.loads(Path(keys_file).read_text()).get("keys", [])
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"keys_file {keys_file}: {exc}") from None
        if not isinstance(extra, list):
            raise ConfigError(f"keys_file {keys_file}: keys must be an array of tables ([[keys]])")
        data["keys"] = [*data.get("keys", []), *extra]
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"{path or 'configuration'}: {where}: {first['msg']}") from None


def embedded_tokenizer_dir(model_repository: Path, triton_model: str) -> Path:
    """Where the tokenizer of a model of the embedded repository is: its own weights directory, except
    the synthetic model's, which speaks SmolLM2's token ids."""
    source = DEFAULT_TRITON_MODEL if triton_model == SYNTHETIC_TRITON_MODEL else triton_model
    return model_repository / source / "weights"


def embedded_models(triton_url: str, model_repository: Path, default_max_tokens: int) -> list[ModelConfig]:
    """The embedded CPU Triton's models: SmolLM2, the synthetic benchmark upstream (same tokenizer),
    all-MiniLM-L6-v2 for embeddings (and rerank by cosine), and Whisper base for transcription."""
    tasks: dict[str, Task] = {EMBEDDING_MODEL_ID: "embed", TRANSCRIPTION_MODEL_ID: "transcribe"}
    return [
        ModelConfig(
            id=model_id,
            task=tasks.get(model_id, "generate"),
            # 64 inputs of ~64 tokens take ~1 s on 2 cores: a short request never waits behind more than two
            max_batch=64 if model_id == EMBEDDING_MODEL_ID else None,
            triton_url=triton_url,
            triton_model=triton_model,
            tokenizer_dir=embedded_tokenizer_dir(model_repository, triton_model),
            default_max_tokens=default_max_tokens,
        )
        for model_id, triton_model in EMBEDDED_MODELS.items()
    ]


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)
