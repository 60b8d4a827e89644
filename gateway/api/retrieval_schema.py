"""REST wire types (requests) of embeddings, rerank, score and tokenization. Shapes only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.api.schema import COMBINATION_ERROR, ChatMessage, WireModel
from gateway.core.limits import MAX_DOCUMENTS, MAX_EMBEDDING_INPUTS

_TEXT: dict[str, JsonValue] = {"type": "string", "minLength": 1}
_IDS: dict[str, JsonValue] = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_INPUT_FORMS: list[JsonValue] = [  # what _inputs takes, for the OpenAPI document
    _TEXT,
    {"type": "array", "items": _TEXT, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
    _IDS,
    {"type": "array", "items": _IDS, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
]


class EmbeddingRequest(WireModel):
    model: str
    # OpenAI's four forms: a string, strings, token ids, lists of token ids (checked by _inputs)
    input: Any = Field(json_schema_extra={"anyOf": _INPUT_FORMS})
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)  # vLLM's extension: truncate, not 400

    @field_validator("input", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> list[str] | list[list[int]]:
        """The inputs as a list of texts or a list of token-id lists, with errors that say which one."""
        if isinstance(value, str) or (isinstance(value, list) and value and all(_is_id(t) for t in value)):
            value = [value]  # one text, or one list of token ids
        if not isinstance(value, list) or not value:
            raise _input_error("'input' must be a non-empty string, array of strings, or array of token ids")
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise _input_error(f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items, not {len(value)}")
        if not all(isinstance(item, str) for item in value) and not all(isinstance(item, list) for item in value):
            raise _input_error("'input' must be a string, strings, token ids, or arrays of token ids: not a mix")
        if isinstance(value[0], str):
            for i, text in enumerate(value):
                if not isinstance(text, str) or not text:
                    raise _input_error(f"input[{i}] must be a non-empty string")
            return value
        for i, ids in enumerate(value):
            if not isinstance(ids, list) or not ids or not all(_is_id(t) for t in ids):
                raise _input_error(f"input[{i}] must be a non-empty array of token ids (integers >= 0)")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        given: list[str] | list[list[int]] = self.input
        return given


def _is_id(value: Any) -> bool:
    return type(value) is int and value >= 0


def _input_error(message: str) -> PydanticCustomError:
    return PydanticCustomError(COMBINATION_ERROR, message)


class TextDocument(WireModel):
    model_config = ConfigDict(extra="ignore")  # Cohere's document objects carry more fields (title, ...)
    text: str


class RerankRequest(WireModel):
    """Cohere's and Jina's shape, as vLLM and Scaleway accept it."""

    model: str
    query: Annotated[str, Field(min_length=1)]
    documents: Annotated[list[str | TextDocument], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: int | None = Field(default=None, ge=0)  # 0 or none: every document (vLLM's rule)
    return_documents: bool = True
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)  # vLLM's: documents cut to this many tokens

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ScoreRequest(WireModel):
    """vLLM's /v1/score: text_1 against text_2, one to one, one to many, or pairwise (core.rerank.score_pairs)."""

    model: str
    text_1: Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    text_2: Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)


class TokenizeRequest(WireModel):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the model's chat template."""

    model: str
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool = True  # with a prompt; a chat template writes its own special tokens
    add_generation_prompt: Literal[True] = True  # as chat completions render it (the count then matches)
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise PydanticCustomError(COMBINATION_ERROR, "Give either 'prompt' or 'messages', not both")
        return self


class DetokenizeRequest(WireModel):
    model: str
    tokens: list[Annotated[int, Field(ge=0)]]
