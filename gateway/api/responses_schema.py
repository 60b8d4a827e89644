"""OpenAI Responses API wire types (``POST /v1/responses`` requests). Shapes only.

The gateway serves the API statelessly: the conversation travels in ``input``. Fields that would need
stored responses (``store: true``, ``previous_response_id``, ``background``, ...) are modelled here
so that the handler can refuse each one by name, with a message that says why.

Input items are read leniently (unknown fields ignored): clients send an earlier response's output
items back as they got them (``id``, ``status``, ``annotations`` ...), and those are not instructions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag

from gateway.api.schema import JsonObjectFormat, JsonSchemaSpec, TextFormat, WireModel
from gateway.core.limits import MAX_TOOLS, MAX_TOP_LOGPROBS, TEMPERATURE_RANGE

# the one `include` value the gateway cannot honour (the output tokens' logprobs)
LOGPROBS_INCLUDE = "message.output_text.logprobs"


def _by_type(default: str | None = None) -> Callable[[Any], str | None]:
    """A discriminator on ``type``. Its tags are written ``type[<value>]``: the error path leaves such
    union tags out of the parameter it names (``input.0.content``, not ``input.0.message.content``)."""

    def tag(value: Any) -> str | None:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", None)
        return f"type[{kind}]" if isinstance(kind, str) else None

    return tag


def _str_or_list(value: Any) -> str:
    """A discriminator between text and a list: only the branch that applies reports its errors."""
    return "str" if isinstance(value, str) else "list[]"


class _Item(WireModel):
    model_config = ConfigDict(extra="ignore")


class InputText(_Item):
    type: Literal["input_text"]
    text: str


class OutputText(_Item):
    type: Literal["output_text"]
    text: str


class RefusalPart(_Item):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    Annotated[InputText, Tag("type[input_text]")]
    | Annotated[OutputText, Tag("type[output_text]")]
    | Annotated[RefusalPart, Tag("type[refusal]")],
    Discriminator(
        _by_type(),
        custom_error_type="unsupported_content",
        custom_error_message="content parts must be 'input_text', 'output_text' or 'refusal' (text only)",
    ),
]
Content = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[ContentPart], Tag("list[]")], Discriminator(_str_or_list)
]


def _part_text(part: InputText | OutputText | RefusalPart) -> str:
    return part.refusal if isinstance(part, RefusalPart) else part.text


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(_part_text(part) for part in self.content)


class FunctionCallItem(_Item):
    """A call the model made (an earlier response's output item, sent back)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str  # JSON text, as the model produced it


class FunctionCallOutputItem(_Item):
    """The result of a call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Annotated[
        Annotated[str, Tag("str")] | Annotated[list[InputText], Tag("list[]")], Discriminator(_str_or_list)
    ]

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


InputItem = Annotated[
    Annotated[MessageItem, Tag("type[message]")]
    | Annotated[FunctionCallItem, Tag("type[function_call]")]
    | Annotated[FunctionCallOutputItem, Tag("type[function_call_output]")],
    Discriminator(
        _by_type("message"),  # a message may leave its type out (OpenAI's "easy input message")
        custom_error_type="unsupported_input_item",
        custom_error_message=(
            "input items must be messages, 'function_call' or 'function_call_output' items "
            "(item references, reasoning and built-in tool items are not supported)"
        ),
    ),
]


class JsonSchemaTextFormat(JsonSchemaSpec):
    """Responses' flat form of chat's ``response_format.json_schema``."""

    type: Literal["json_schema"]


TextFormatParam = Annotated[
    Annotated[TextFormat, Tag("type[text]")]
    | Annotated[JsonObjectFormat, Tag("type[json_object]")]
    | Annotated[JsonSchemaTextFormat, Tag("type[json_schema]")],
    Discriminator(
        _by_type(),
        custom_error_type="unsupported_format",
        custom_error_message="the format's type must be 'text', 'json_object' or 'json_schema'",
    ),
]


class TextConfig(WireModel):
    format: TextFormatParam | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # a hint to OpenAI's models; accepted, unused


class FunctionTool(WireModel):
    """Responses' flat function tool (chat nests the same fields under ``function``)."""

    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(WireModel):
    type: Literal["function"]
    name: str


class ResponsesStreamOptions(WireModel):
    include_obfuscation: bool = True  # OpenAI pads events against side channels; accepted, not needed here


class ResponsesRequest(WireModel):
    model: str = Field(min_length=1)
    input: Annotated[
        Annotated[str, Tag("str")] | Annotated[list[InputItem], Tag("list[]"), Field(min_length=1)],
        Discriminator(_str_or_list),
    ]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: ResponsesStreamOptions | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool = True
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = None
    # accepted and unused: hints about caching and abuse tracking, limits on built-in tools (none here),
    # outputs of features the gateway never produces
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    include: list[str] | None = None
    service_tier: Any = None
    # checked by the handler: what needs stored state or a feature the gateway does not have
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool | None = None
    prompt: Any = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    # what the shared transport asks of a request (gateway.api.respond): the usage always ends the stream
    @property
    def include_usage(self) -> bool:
        return False

    @property
    def continuous_usage(self) -> bool:
        return False
