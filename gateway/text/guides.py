"""The output constraint sent upstream (a :class:`Guide`): for ``response_format`` and for tools.

Two grammar dialects: ``llguidance`` (the CPU model: a Lark grammar embedding JSON Schemas with
``%json``, sent as guide type ``ebnf_grammar``) and ``xgrammar`` (TensorRT-LLM, which cannot mix
markup and schemas: forced calls become a ``json_schema`` guide after a prompt prefill of the
format's opening markup, and ``auto`` is left unconstrained and parsed).

Schemas are checked by compiling them with llguidance, so a feature it cannot enforce is a request
error up front rather than a surprise during generation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

from llguidance import LLMatcher

from gateway.core.types import Guide, Tool, ToolChoice
from gateway.text.toolcalls import FORMATS

DIALECTS: Final = frozenset({"llguidance", "xgrammar"})
EMPTY_PARAMETERS: Final[Mapping[str, Any]] = {"type": "object", "properties": {}}

# the markup around one call, per format: (before the JSON, after it, between two calls)
_MARKUP: Final = {
    "hermes": ("<tool_call>\n", "\n</tool_call>", "\n"),
    "generic": ("<tool_call>\n", "\n</tool_call>", "\n"),
    "llama3_json": ("", "", "; "),
}
_TRIGGER: Final = "<tool_call>"  # what starts a call in free text (auto)
# compact JSON, in the grammar as in the prompt's examples: no run-away whitespace either
_COMPACT: Final = {"whitespace_flexible": False}


def canonical(schema: Mapping[str, Any]) -> str:
    """A schema as compact JSON text, its keys in their given order (generation follows it)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


@lru_cache(maxsize=512)
def _schema_error(text: str) -> str:
    try:
        grammar = LLMatcher.grammar_from_json_schema(text)
    except ValueError as exc:
        return str(exc)
    error: str = LLMatcher.validate_grammar(grammar)
    return error


def check_schema(schema: Mapping[str, Any], where: str = "schema") -> None:
    """ValueError (naming the feature) when llguidance cannot enforce ``schema``; cached per schema."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where} must be a JSON Schema object")
    error = _schema_error(canonical(schema))
    if error:
        raise ValueError(f"{where} is not supported for guided decoding: {error.strip()[:500]}")


_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def closed(schema: Any) -> Any:
    """``schema`` with every object that does not say otherwise closed to the properties it lists
    (``additionalProperties: false``), as xgrammar's strict mode and OpenAI's strict outputs do.

    Everything the closed schema accepts, the given one accepts too; a small model held to an open
    object tends to invent properties (copying the schema's own keywords) until its tokens run out.
    """
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), Mapping):
            out[key] = {name: closed(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(sub) for sub in out[key]]
    for key in _SUBSCHEMA_ONE:
        if isinstance(out.get(key), Mapping):
            out[key] = closed(out[key])
    is_object = out.get("type") == "object" or (isinstance(out.get("type"), list) and "object" in out["type"])
    if (is_object or "properties" in out) and "additionalProperties" not in out and "unevaluatedProperties" not in out:
        out["additionalProperties"] = False
    return out


def response_format_guide(rf: Mapping[str, Any]) -> Guide | None:
    """The guide for an OpenAI ``response_format``; None for plain text."""
    if not isinstance(rf, Mapping):
        raise ValueError("response_format must be an object")
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Guide("json")
    if kind != "json_schema":
        raise ValueError("response_format.type must be one of 'text', 'json_object', 'json_schema'")
    spec = rf.get("json_schema")
    if not isinstance(spec, Mapping):
        raise ValueError("response_format.json_schema must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("response_format.json_schema.name must be a non-empty string")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ValueError("response_format.json_schema.strict must be a boolean")
    schema = spec.get("schema")
    if schema is None:  # optional in OpenAI's API: any JSON object
        return Guide("json")
    if not isinstance(schema, Mapping):
        raise ValueError("response_format.json_schema.schema must be a JSON Schema object")
    check_schema(schema, "response_format.json_schema.schema")
    return Guide("json_schema", canonical(closed(schema)))


def _call_schema(tool: Tool, args_key: str) -> dict[str, Any]:
    parameters = tool.parameters or EMPTY_PARAMETERS
    check_schema(parameters, f"the parameters of tool {tool.name!r}")
    parameters = closed(parameters)
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, args_key: parameters},
        "required": ["name", args_key],
        "additionalProperties": False,
    }


def _calls_schema(tools: Sequence[Tool], args_key: str) -> dict[str, Any]:
    """One call of any of ``tools``: ``{"name": <const>, <args_key>: <its parameters>}``."""
    schemas = [_call_schema(tool, args_key) for tool in tools]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _lit(text: str) -> str:
    """A Lark string literal."""
    return json.dumps(text)


def _lark(tools: Sequence[Tool], fmt: str, mode: str, parallel: bool) -> str:
    """The llguidance grammar of the calls ``mode`` allows, in format ``fmt``."""
    before, after, between = _MARKUP[fmt]
    args_key = "parameters" if fmt == "llama3_json" else "arguments"
    more = f" ({_lit(between)} call)*" if parallel and mode != "named" else ""
    body = f"body: %json {canonical({'x-guidance': _COMPACT, **_calls_schema(tools, args_key)})}"
    if not before:  # bare JSON calls
        call = "call: body"
        if mode == "auto":  # text whose first non-space is not "{", or calls
            return _rules(f"start: TEXT | call{more}", r"TEXT: /([ \t\r\n]*[^ \t\r\n{](?s:.*))?/", call, body)
        return _rules(f"start: call{more}", call, body)
    trigger, rest = before[: len(_TRIGGER)], before[len(_TRIGGER) :]
    assert trigger == _TRIGGER
    tail = f"tail: {_lit(rest)} body {_lit(after)}"
    call = f"call: {_lit(trigger)} tail"
    if mode == "auto":  # text without the opener, or text (maybe none) up to the opener, then calls
        return _rules(
            f"start: TEXT | head tail{more}",
            f"head[lazy]: TEXT {_lit(trigger)}",
            rf"TEXT: /(?s:.*)/ & ~/(?s:.*){_TRIGGER}(?s:.*)/",
            call,
            tail,
            body,
        )
    return _rules(f"start: call{more}", call, tail, body)


def _rules(*rules: str) -> str:
    return "%llguidance {}\n" + "\n".join(rules) + "\n"


def tool_guide(tools: Sequence[Tool], choice: ToolChoice, parallel: bool, fmt: str, dialect: str) -> Guide | None:
    """The guide that makes the model's tool calls parse (in format ``fmt``), or None.

    ``required``: at least one call (one, or several when ``parallel``); ``named``: exactly one call
    of that tool; ``auto``: plain text or calls. For ``xgrammar``, ``auto`` is None and a forced call
    is one JSON call after :attr:`Guide.prefill` (the parser must be fed the prefill first).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown tool-call format {fmt!r}")
    if dialect not in DIALECTS:
        raise ValueError(f"unknown grammar dialect {dialect!r}")
    mode = choice.mode
    if mode == "none" or (mode == "auto" and not tools):
        return None
    if mode == "named":
        tools = [tool for tool in tools if tool.name == choice.name]
        if not tools:
            raise ValueError(f"tool_choice names the function {choice.name!r}, which is not among the tools")
    elif mode == "required":
        if not tools:
            raise ValueError("tool_choice 'required' needs at least one tool")
    elif mode != "auto":
        raise ValueError(f"unknown tool_choice mode {mode!r}")
    if dialect == "llguidance":
        return Guide("ebnf_grammar", _lark(tools, fmt, mode, parallel))
    if mode == "auto":
        return None
    args_key = "parameters" if fmt == "llama3_json" else "arguments"
    return Guide("json_schema", canonical(_calls_schema(tools, args_key)), prefill=_MARKUP[fmt][0])
