"""Guides for response_format and tools: shapes, schema checks, and grammars that llguidance compiles
and that, walked with the real tokenizer, only produce calls the parser reads and the schema accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest
from llguidance import LLMatcher, LLTokenizer

from gateway.core.types import Guide, Tool, ToolChoice
from gateway.text.guides import _schema_error, check_schema, closed, response_format_guide, tool_guide
from gateway.text.toolcalls import parse_all

TOKENIZER_JSON = Path(__file__).resolve().parents[2] / "model_repository" / "smollm2" / "weights" / "tokenizer.json"
END_ID = 2  # <|im_end|>

WEATHER = Tool(
    "get_weather",
    "Current weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
ADD = Tool(
    "add",
    "Add two small numbers.",
    {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 99},
            "b": {"type": "integer", "minimum": 0, "maximum": 99},
            "exact": {"type": "boolean"},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
TOOLS = [WEATHER, ADD]
BY_NAME = {tool.name: tool for tool in TOOLS}
MODES = [ToolChoice("auto"), ToolChoice("required"), ToolChoice("named", "add")]


@pytest.fixture(scope="module")
def maybe_tok() -> LLTokenizer | None:
    return LLTokenizer(str(TOKENIZER_JSON), eos_token=END_ID) if TOKENIZER_JSON.is_file() else None


@pytest.fixture
def lltok(maybe_tok: LLTokenizer | None) -> LLTokenizer:
    if maybe_tok is None:
        pytest.skip("model not prepared: no tokenizer.json")
    return maybe_tok


def matcher(tok: LLTokenizer, guide: Guide) -> LLMatcher:
    assert guide.type == "ebnf_grammar"
    m = LLMatcher(tok, LLMatcher.grammar_from_lark(guide.text), log_level=0)
    assert not m.is_error(), m.get_error()
    return m


def walk(tok: LLTokenizer, m: LLMatcher, seed: int, max_steps: int = 800) -> str:
    """Greedy decoding of random logits under the grammar's mask, up to the end token."""
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    for _ in range(max_steps):
        allowed = np.flatnonzero(np.frombuffer(m.compute_logit_bias(), dtype=np.uint8)[: tok.vocab_size])
        token = int(allowed[np.argmax(rng.standard_normal(len(allowed)))])  # random logits, masked, argmax
        if token == END_ID:
            assert m.is_accepting()
            return tok.decode_str(ids)
        assert m.consume_token(token), m.get_error()
        ids.append(token)
    pytest.fail(f"no end within {max_steps} tokens: {tok.decode_str(ids)!r}")


def accepts(tok: LLTokenizer, guide: Guide, text: str) -> bool:
    m = matcher(tok, guide)
    return bool(m.consume_tokens(tok.tokenize_str(text))) and m.is_accepting()


def check_calls(calls: list[tuple[str, str]], names: set[str]) -> None:
    for name, arguments in calls:
        assert name in names
        jsonschema.validate(json.loads(arguments), dict(BY_NAME[name].parameters))


# response_format


def test_response_format_text_and_json_object() -> None:
    assert response_format_guide({"type": "text"}) is None
    assert response_format_guide({"type": "json_object"}) == Guide("json")


def test_response_format_json_schema_keeps_property_order() -> None:
    schema = {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}}}
    guide = response_format_guide(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    )
    assert guide == Guide("json_schema", json.dumps({**schema, "additionalProperties": False}, separators=(",", ":")))
    assert guide.text.index("zeta") < guide.text.index("alpha")
    assert response_format_guide({"type": "json_schema", "json_schema": {"name": "x"}}) == Guide("json")


@pytest.mark.parametrize(
    ("rf", "field"),
    [
        ("json", "response_format"),
        ({}, "response_format.type"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": []}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": 3, "schema": {}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}, "response_format.json_schema.strict"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "response_format.json_schema.schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objet"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_response_format_shapes(rf: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.") + r"\b"):
        response_format_guide(rf)


@pytest.mark.parametrize(
    ("schema", "feature"),
    [
        ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "if"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "not": {"required": ["a"]}}, "not"),
        ({"type": "string", "format": "color"}, "color"),
        ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
        ({"$ref": "https://example.com/schema.json"}, "example.com"),
    ],
)
def test_check_schema_names_what_cannot_be_enforced(schema: dict[str, Any], feature: str) -> None:
    with pytest.raises(ValueError, match="not supported") as caught:
        check_schema(schema)
    assert feature in str(caught.value)


def test_check_schema_accepts_and_caches() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string", "minLength": 1}}, "required": ["q"]}
    check_schema(schema)
    hits = _schema_error.cache_info().hits
    check_schema(dict(schema))
    assert _schema_error.cache_info().hits == hits + 1


# tools: shapes


def test_tool_guide_none_and_xgrammar_auto() -> None:
    for dialect in ("llguidance", "xgrammar"):
        assert tool_guide(TOOLS, ToolChoice("none"), True, "hermes", dialect) is None
        assert tool_guide([], ToolChoice("auto"), True, "hermes", dialect) is None
    assert tool_guide(TOOLS, ToolChoice("auto"), True, "hermes", "xgrammar") is None


@pytest.mark.parametrize(
    ("fmt", "prefill", "key"),
    [
        ("hermes", "<tool_call>\n", "arguments"),
        ("generic", "<tool_call>\n", "arguments"),
        ("llama3_json", "", "parameters"),
    ],
)
def test_xgrammar_forced_calls_are_a_schema_after_a_prefill(fmt: str, prefill: str, key: str) -> None:
    guide = tool_guide(TOOLS, ToolChoice("required"), True, fmt, "xgrammar")
    assert guide is not None and guide.type == "json_schema" and guide.prefill == prefill
    schema = json.loads(guide.text)
    assert [s["properties"]["name"] for s in schema["anyOf"]] == [{"const": "get_weather"}, {"const": "add"}]
    assert list(schema["anyOf"][1]["properties"]) == ["name", key]
    jsonschema.validate({"name": "add", key: {"a": 1, "b": 2}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "add", key: {"a": 1}}, schema)
    named = tool_guide(TOOLS, ToolChoice("named", "get_weather"), False, fmt, "xgrammar")
    assert named is not None and json.loads(named.text)["properties"]["name"] == {"const": "get_weather"}


def test_tool_without_parameters_takes_an_empty_object() -> None:
    guide = tool_guide([Tool("now")], ToolChoice("required"), False, "hermes", "xgrammar")
    assert guide is not None
    assert json.loads(guide.text)["properties"]["arguments"] == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }


def test_tool_guide_errors() -> None:
    with pytest.raises(ValueError, match="format"):
        tool_guide(TOOLS, ToolChoice("auto"), True, "mistral", "llguidance")
    with pytest.raises(ValueError, match="dialect"):
        tool_guide(TOOLS, ToolChoice("auto"), True, "hermes", "outlines")
    with pytest.raises(ValueError, match="'nope'"):
        tool_guide(TOOLS, ToolChoice("named", "nope"), True, "hermes", "llguidance")
    with pytest.raises(ValueError, match="required"):
        tool_guide([], ToolChoice("required"), True, "hermes", "xgrammar")
    bad = Tool("bad", parameters={"type": "array", "uniqueItems": True})
    with pytest.raises(ValueError, match=r"'bad'.*uniqueItems"):
        tool_guide([WEATHER, bad], ToolChoice("required"), True, "hermes", "llguidance")


# tools: the llguidance grammars


@pytest.mark.parametrize("fmt", ["hermes", "generic", "llama3_json"])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("choice", MODES, ids=lambda c: c.mode)
def test_grammars_compile(maybe_tok: LLTokenizer | None, fmt: str, parallel: bool, choice: ToolChoice) -> None:
    guide = tool_guide(TOOLS, choice, parallel, fmt, "llguidance")
    assert guide is not None and guide.type == "ebnf_grammar" and guide.prefill == ""
    assert LLMatcher.validate_grammar(LLMatcher.grammar_from_lark(guide.text), maybe_tok) == ""


@pytest.mark.parametrize("fmt", ["hermes", "generic", "llama3_json"])
@pytest.mark.parametrize("parallel", [False, True])
def test_required_walks_give_valid_calls(lltok: LLTokenizer, fmt: str, parallel: bool) -> None:
    guide = tool_guide(TOOLS, ToolChoice("required"), parallel, fmt, "llguidance")
    assert guide is not None
    counts = set()
    for seed in range(6):
        text = walk(lltok, matcher(lltok, guide), seed)
        content, calls = parse_all(text, fmt)
        assert content == "" and calls, text
        check_calls(calls, {"get_weather", "add"})
        counts.add(len(calls))
    assert counts == {1} if not parallel else max(counts) >= 2


@pytest.mark.parametrize("fmt", ["hermes", "llama3_json"])
def test_named_walks_call_that_tool_once(lltok: LLTokenizer, fmt: str) -> None:
    guide = tool_guide(TOOLS, ToolChoice("named", "get_weather"), True, fmt, "llguidance")
    assert guide is not None
    for seed in range(4):
        content, calls = parse_all(walk(lltok, matcher(lltok, guide), seed), fmt)
        assert content == "" and len(calls) == 1 and calls[0][0] == "get_weather"
        check_calls(calls, {"get_weather"})


def test_hermes_auto_is_text_or_calls(lltok: LLTokenizer) -> None:
    guide = tool_guide(TOOLS, ToolChoice("auto"), True, "hermes", "llguidance")
    assert guide is not None
    assert accepts(lltok, guide, "The weather is fine, no tool needed.\nBye")  # and the end may follow
    assert accepts(lltok, guide, "")
    assert accepts(lltok, guide, 'Checking.\n<tool_call>\n{"name":"add","arguments":{"a":1,"b":2}}\n</tool_call>')
    assert not accepts(lltok, guide, "I would use <tool_call> here")
    assert not accepts(lltok, guide, '<tool_call>\n{"name":"add","arguments":{"a":1,"b":2}}\n</tool_call> done')
    # once the opener is written, the rest is a valid call
    for seed in range(4):
        m = matcher(lltok, guide)
        assert m.consume_tokens(lltok.tokenize_str("Let me see. <tool_call>"))
        text = "Let me see. <tool_call>" + walk(lltok, m, seed)
        content, calls = parse_all(text, "hermes")
        assert content == "Let me see." and calls
        check_calls(calls, {"get_weather", "add"})


def test_llama3_auto_is_text_or_calls(lltok: LLTokenizer) -> None:
    guide = tool_guide(TOOLS, ToolChoice("auto"), False, "llama3_json", "llguidance")
    assert guide is not None
    assert accepts(lltok, guide, "  Sunny, 21 degrees {roughly}.")
    assert accepts(lltok, guide, '{"name":"get_weather","parameters":{"city":"Paris"}}')
    assert not accepts(lltok, guide, "{roughly}")
    assert not accepts(lltok, guide, ' {"name":"get_weather","parameters":{"city":"Paris"}}')
    m = matcher(lltok, guide)
    assert m.consume_tokens(lltok.tokenize_str("{"))
    content, calls = parse_all("{" + walk(lltok, m, 0), "llama3_json")
    assert content == "" and len(calls) == 1
    check_calls(calls, {"get_weather", "add"})


def test_arguments_are_compact_json(lltok: LLTokenizer) -> None:
    guide = tool_guide([ADD], ToolChoice("required"), False, "hermes", "llguidance")
    assert guide is not None
    assert accepts(lltok, guide, '<tool_call>\n{"name":"add","arguments":{"a":1,"b":2}}\n</tool_call>')
    assert not accepts(lltok, guide, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')


def test_schema_text_cannot_break_the_grammar(lltok: LLTokenizer) -> None:
    odd = Tool(
        "odd-name_2",
        parameters={
            "type": "object",
            "description": 'braces } { and "quotes", a \\ backslash, /slashes/, %json {, newline\n, ünïcödé ☃',
            "properties": {"s": {"enum": ["}\n</tool_call>", "<tool_call>"]}},
            "required": ["s"],
            "additionalProperties": False,
        },
    )
    for fmt in ("hermes", "llama3_json"):
        for choice in MODES[:2]:
            guide = tool_guide([odd], choice, True, fmt, "llguidance")
            assert guide is not None
            for seed in range(3):
                m = matcher(lltok, guide)
                prefix = ("<tool_call>" if fmt == "hermes" else "{") if choice.mode == "auto" else ""
                assert m.consume_tokens(lltok.tokenize_str(prefix))
                content, calls = parse_all(prefix + walk(lltok, m, seed), fmt)
                assert content == "" and calls
                for name, arguments in calls:
                    assert name == "odd-name_2"
                    jsonschema.validate(json.loads(arguments), dict(odd.parameters))


def test_objects_are_closed_unless_the_schema_says_otherwise() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "list": {"type": "array", "items": {"properties": {"c": {"type": "integer"}}}},
            "open": {"type": "object", "additionalProperties": {"type": "string"}},
            "either": {"anyOf": [{"type": "object"}, {"type": "string"}]},
        },
        "$defs": {"d": {"type": "object", "properties": {}}},
    }
    out = closed(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["list"]["items"]["additionalProperties"] is False
    assert out["properties"]["open"]["additionalProperties"] == {"type": "string"}  # as given
    assert out["properties"]["either"]["anyOf"][0]["additionalProperties"] is False
    assert out["$defs"]["d"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the caller's schema is left alone
