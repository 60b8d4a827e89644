"""response_format against the real CPU model: the output is held to the schema by its sampling."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.conftest import MODEL, Stack

pytestmark = pytest.mark.e2e

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "enum": ["Paris", "London", "Berlin"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person who lives in a European capital, as JSON."}]


@pytest.fixture(scope="module")
def sdk(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=300)


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(sdk: openai.OpenAI, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "response_format": schema_format(PERSON),
        "n": 2,
        "temperature": 0.8,
        "seed": 7,
        "max_tokens": 200,
    }
    if stream:
        texts = ["", ""]
        reasons: list[str | None] = [None, None]
        for chunk in sdk.chat.completions.create(**kwargs, stream=True):
            for c in chunk.choices:
                texts[c.index] += c.delta.content or ""
                reasons[c.index] = c.finish_reason or reasons[c.index]
    else:
        resp = sdk.chat.completions.create(**kwargs)
        texts = [c.message.content or "" for c in resp.choices]
        reasons = [c.finish_reason for c in resp.choices]
    assert reasons == ["stop", "stop"], texts
    for text in texts:
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_mode_gives_one_object(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object about the sea."}],  # type: ignore[list-item]
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=120,
    )
    choice = resp.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:  # a length cut is the one case where the JSON may be incomplete
        assert choice.finish_reason == "length" and (choice.message.content or "").startswith("{")


def test_length_cut_is_finish_reason_length(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format=schema_format(PERSON),
        max_tokens=5,
        temperature=0,  # type: ignore[arg-type]
    )
    assert resp.choices[0].finish_reason == "length"
    assert (resp.choices[0].message.content or "").startswith("{")


def test_stop_string_inside_constrained_output(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        response_format=schema_format(PERSON),
        stop=['"age"'],
        temperature=0,  # type: ignore[arg-type]
    )
    content = resp.choices[0].message.content or ""
    assert resp.choices[0].finish_reason == "stop" and '"age"' not in content and content.startswith("{")


def test_completions_take_response_format_too(sdk: openai.OpenAI) -> None:
    resp = sdk.completions.create(
        model=MODEL,
        prompt="A JSON record of a person:",
        max_tokens=200,
        temperature=0,
        extra_body={"response_format": schema_format(PERSON)},
    )
    jsonschema.validate(json.loads(resp.choices[0].text), PERSON)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "nonsense"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
    ],
)
def test_a_schema_that_cannot_be_enforced_is_a_400(sdk: openai.OpenAI, schema: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model=MODEL, messages=ASK, response_format=schema_format(schema))  # type: ignore[arg-type]
    assert err.value.body["param"] == "response_format"  # type: ignore[index]
