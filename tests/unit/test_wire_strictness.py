"""The OpenAI wire types validate as OpenAI does: no coercion, null is "not given", stream_options needs stream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.api.body import parse
from gateway.api.schema import ChatCompletionRequest, CompletionRequest, SamplingFields
from gateway.errors import InvalidRequest

MESSAGES = [{"role": "user", "content": "Hi"}]


def chat(raw: str) -> dict[str, Any]:
    """A chat body with extra fields written as JSON text, so numbers keep their JSON types."""
    extra = orjson.loads(raw)
    assert isinstance(extra, dict)
    return {"model": "m", "messages": MESSAGES, **extra}


def completion(raw: str) -> dict[str, Any]:
    extra = orjson.loads(raw)
    assert isinstance(extra, dict)
    return {"model": "m", "prompt": "x", **extra}


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"max_tokens": "4"}', "max_tokens"),
        ('{"max_tokens": true}', "max_tokens"),
        ('{"max_tokens": 4.0}', "max_tokens"),
        ('{"max_completion_tokens": "4"}', "max_completion_tokens"),
        ('{"n": "2"}', "n"),
        ('{"stream": "yes"}', "stream"),
        ('{"stream": 1}', "stream"),
        ('{"temperature": "0.5"}', "temperature"),
        ('{"temperature": true}', "temperature"),
        ('{"top_p": "1"}', "top_p"),
        ('{"seed": 1.5}', "seed"),
        ('{"seed": "7"}', "seed"),
        ('{"top_k": "5"}', "top_k"),
        ('{"min_tokens": false}', "min_tokens"),
        ('{"ignore_eos": "false"}', "ignore_eos"),
        ('{"ignore_eos": 0}', "ignore_eos"),
        ('{"stop": 5}', "stop"),
        ('{"user": 5}', "user"),
        ('{"stream": true, "stream_options": {"include_usage": "yes"}}', "stream_options.include_usage"),
        ('{"messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
        ('{"model": 5}', "model"),
        ('{"model": null}', "model"),
    ],
)
def test_chat_types_are_not_coerced(raw: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(ChatCompletionRequest, chat(raw))
    assert err.value.param == param
    assert err.value.kind.http_status == 400
    assert err.value.message.startswith(f"Invalid type for '{param}'")


@pytest.mark.parametrize(
    ("raw", "param"),
    [('{"echo": "true"}', "echo"), ('{"echo": 1}', "echo"), ('{"prompt": [true, 2]}', "prompt")],
)
def test_completion_types_are_not_coerced(raw: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(CompletionRequest, completion(raw))
    assert err.value.param == param


def test_float_fields_take_json_integers() -> None:
    body = parse(ChatCompletionRequest, chat('{"temperature": 1, "top_p": 1, "frequency_penalty": 0}'))
    assert (body.temperature, body.top_p, body.frequency_penalty) == (1.0, 1.0, 0.0)
    assert isinstance(body.temperature, float)


NULLABLE = [
    "n",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "top_k",
    "min_tokens",
    "ignore_eos",
    "logprobs",
    "logit_bias",
    "response_format",
]


@pytest.mark.parametrize("field", [*NULLABLE, "max_completion_tokens", "tools", "tool_choice", "top_logprobs"])
def test_null_is_not_given_in_chat(field: str) -> None:
    assert parse(ChatCompletionRequest, chat(f'{{"{field}": null}}')) == parse(ChatCompletionRequest, chat("{}"))


@pytest.mark.parametrize("field", [*NULLABLE, "echo", "best_of", "suffix"])
def test_null_is_not_given_in_completions(field: str) -> None:
    assert parse(CompletionRequest, completion(f'{{"{field}": null}}')) == parse(CompletionRequest, completion("{}"))


def test_null_message_content_and_include_usage() -> None:
    body = parse(
        ChatCompletionRequest,
        chat(
            '{"stream": true, "stream_options": {"include_usage": null},'
            ' "messages": [{"role": "user", "content": null}]}'
        ),
    )
    assert body.messages[0].text() == "" and not body.include_usage


def test_an_unknown_field_is_refused_even_when_null() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(ChatCompletionRequest, chat('{"frobnicate": null}'))
    assert err.value.param == "frobnicate"


@pytest.mark.parametrize("model", [ChatCompletionRequest, CompletionRequest])
@pytest.mark.parametrize("stream", ['"stream": false, ', '"stream": null, ', ""])
def test_stream_options_need_stream(model: type[SamplingFields], stream: str) -> None:
    body = (chat if model is ChatCompletionRequest else completion)(
        f'{{{stream}"stream_options": {{"include_usage": true}}}}'
    )
    with pytest.raises(InvalidRequest) as err:
        parse(model, body)
    assert err.value.param == "stream_options"
    assert err.value.message == "The 'stream_options' parameter is only allowed when 'stream' is enabled."


@pytest.mark.parametrize("model", [ChatCompletionRequest, CompletionRequest])
def test_stream_options_with_stream(model: type[SamplingFields]) -> None:
    make = chat if model is ChatCompletionRequest else completion
    assert parse(model, make('{"stream": true, "stream_options": {"include_usage": true}}')).include_usage
    assert not parse(model, make('{"stream": false, "stream_options": null}')).include_usage
