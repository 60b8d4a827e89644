"""OpenAI REST wire types (requests). Shapes only: no logic beyond field validation.

Responses are built as plain dicts / byte templates by the transport (pydantic costs ~12 µs per
chunk; see architecture.md), so only request bodies are modelled here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.core.limits import (
    LOGIT_BIAS_RANGE,
    MAX_CHOICES,
    MAX_COMPLETION_LOGPROBS,
    MAX_STOP_STRINGS,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    PENALTY_RANGE,
    TEMPERATURE_RANGE,
)

# Known OpenAI parameters the gateway does not implement: a non-default value gets a 400 naming
# the parameter instead of being silently ignored ("Unrecognized request argument" for the rest).
UNSUPPORTED_PARAMS: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),  # deprecated by OpenAI for `tools`
    "function_call": (None, "none"),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "metadata": (None, {}),
}

Stop = str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None

# the error type of a check that spans fields; its message is reported as written
COMBINATION_ERROR = "invalid_combination"


class WireModel(BaseModel):
    """Validated as OpenAI does: no coercion (``"4"`` is not 4 and ``1`` is not true, while a JSON
    integer is a valid float), unknown fields refused, and ``null`` for an optional field means
    "not given" (its default applies)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_not_given(cls, data: Any) -> Any:
        if not isinstance(data, dict) or None not in data.values():
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}


class StreamOptions(WireModel):
    include_usage: bool = False
    include_obfuscation: bool = True  # OpenAI pads chunks against side channels; accepted, not needed here
    continuous_usage_stats: bool = False  # vLLM's extension: the usage so far on every chunk


class TextFormat(WireModel):
    type: Literal["text"]


class JsonObjectFormat(WireModel):
    type: Literal["json_object"]


class JsonSchemaSpec(WireModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(WireModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormatParam = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class SamplingFields(WireModel):
    """Parameters shared by chat and completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    presence_penalty: float | None = Field(default=None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    frequency_penalty: float | None = Field(default=None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    user: str | None = None
    # extensions (vLLM's names): fixed-length benchmarks need min_tokens / ignore_eos
    top_k: int | None = Field(default=None, ge=-1)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False

    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)  # vLLM's extension
    stop_token_ids: list[int] | None = Field(default=None, max_length=64)  # vLLM's extension
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormatParam | None = None  # OpenAI's for chat; an extension on completions

    # these take any value OpenAI takes; the gateway decides what it can honour
    service_tier: Any = None
    store: Any = None
    metadata: Any = None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {token!r}")
            if not LOGIT_BIAS_RANGE[0] <= bias <= LOGIT_BIAS_RANGE[1]:
                raise ValueError(f"logit_bias values must be in [{LOGIT_BIAS_RANGE[0]}, {LOGIT_BIAS_RANGE[1]}]")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: Stop) -> Stop:
        if isinstance(value, list) and any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and "stream" in info.data and not info.data["stream"]:
            raise PydanticCustomError(
                COMBINATION_ERROR, "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            )
        return value

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats

    @property
    def response_format_dict(self) -> dict[str, Any] | None:
        """``response_format`` as OpenAI's JSON (fields not given left out), as the guides read it."""
        if self.response_format is None:
            return None
        return self.response_format.model_dump(by_alias=True, exclude_none=True)

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def token_limit_param(self) -> str:
        return "max_tokens"

    @property
    def logprobs_asked(self) -> tuple[bool, int, str]:
        """Logprobs wanted, how many alternatives per token, and the parameter that asks for them."""
        return False, 0, "logprobs"


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class FunctionCall(WireModel):
    name: str
    arguments: str  # JSON text, as the model produced it


class ToolCallParam(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    model_config = ConfigDict(extra="ignore")  # name, refusal, ... are accepted and unused
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallParam] | None = None  # assistant messages: the calls it made
    tool_call_id: str | None = None  # tool messages: the call this is the result of

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDef(WireModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolParam(WireModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolParam] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    functions: Any = None
    function_call: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def logprobs_asked(self) -> tuple[bool, int, str]:
        return self.logprobs, self.top_logprobs or 0, "top_logprobs" if self.top_logprobs else "logprobs"

    @property
    def token_limit_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)

    @property
    def logprobs_asked(self) -> tuple[bool, int, str]:
        return self.logprobs is not None, self.logprobs or 0, "logprobs"

    best_of: Any = None
    suffix: Any = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: Prompt) -> Prompt:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        if isinstance(value, list) and value and isinstance(value[0], list) and any(not p for p in value):
            raise ValueError("token prompts must not be empty")
        return value
