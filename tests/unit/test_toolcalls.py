"""The streaming tool-call parsers: any split of the text gives the same content and calls."""

from __future__ import annotations

import json
import random
import re

import pytest

from gateway.core.types import ToolCallDelta
from gateway.text.toolcalls import (
    FORMATS,
    Event,
    HermesParser,
    Llama3JsonParser,
    ToolCallParser,
    collect,
    make_parser,
    new_call_id,
    parse_all,
)

Calls = list[tuple[str, str]]

HERMES_TWO = (
    "Let me check both.\n"
    '<tool_call>\n{"name": "get_weather", '
    '"arguments": {"city": "Paris", "note": "a \\"}{\\" b", "n": [1, {"x": null}]}}\n'
    "</tool_call>\n"
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris", "emoji": "😀 ü"}}\n</tool_call>\n'
)
HERMES_TWO_CALLS = [
    ("get_weather", '{"city": "Paris", "note": "a \\"}{\\" b", "n": [1, {"x": null}]}'),
    ("get_time", '{"tz": "Europe/Paris", "emoji": "😀 ü"}'),
]
LLAMA_TWO = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "now", "parameters": {}}'
LLAMA_TWO_CALLS = [("get_weather", '{"city": "Paris"}'), ("now", "{}")]


def feed(fmt: str, pieces: list[str]) -> tuple[list[Event], ToolCallParser]:
    parser = make_parser(fmt)
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish(), parser


def chunkings(text: str, seed: int = 0) -> list[list[str]]:
    """The text whole, at every two-piece split, one character at a time, and in random chunks."""
    ways = [[text], list(text)] + [[text[:k], text[k:]] for k in range(1, len(text))]
    rng = random.Random(seed)
    for _ in range(30 if len(text) > 2 else 0):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        ways.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    return ways


def check_events(events: list[Event]) -> None:
    """OpenAI's streaming shape: a first delta (index, id, name) per call, then argument fragments."""
    next_index = 0
    for event in events:
        if isinstance(event, str):
            assert event
            for markup in ("<tool_call>", "</tool_call>", '"name"', "<|python_tag|>"):
                assert markup not in event
            continue
        assert isinstance(event, ToolCallDelta)
        if event.name is not None:
            assert event.index == next_index
            assert event.id is not None and re.fullmatch(r"call_[A-Za-z0-9]{24}", event.id)
            assert event.arguments == ""
            next_index += 1
        else:
            assert event.id is None and event.index == next_index - 1 and event.arguments


def check_splits(fmt: str, text: str, content: str, calls: Calls, markup_free: bool = True) -> None:
    assert parse_all(text, fmt) == (content, calls)
    for pieces in chunkings(text):
        events, parser = feed(fmt, pieces)
        assert collect(events) == (content, calls), pieces
        assert parser.calls_seen == len(calls)
        if markup_free:
            check_events(events)


@pytest.mark.parametrize("fmt", ["hermes", "generic"])
def test_hermes_text_then_two_calls(fmt: str) -> None:
    check_splits(fmt, HERMES_TWO, "Let me check both.", HERMES_TWO_CALLS)
    for _, arguments in HERMES_TWO_CALLS:
        json.loads(arguments)


def test_hermes_calls_only_and_compact_markup() -> None:
    text = '<tool_call>{"name":"f","arguments":{"a":1}}</tool_call><tool_call>{"name":"g","arguments":{}}</tool_call>'
    check_splits("hermes", text, "", [("f", '{"a":1}'), ("g", "{}")])


def test_hermes_arguments_stream_before_the_call_closes() -> None:
    parser = make_parser("hermes")
    events = parser.feed('<tool_call>\n{"name": "f", "arguments": {"city": "Pa')
    header, arguments = events
    assert isinstance(header, ToolCallDelta) and (header.index, header.name) == (0, "f")
    assert arguments == ToolCallDelta(index=0, arguments='{"city": "Pa')
    assert parser.feed('ris"}') == [ToolCallDelta(index=0, arguments='ris"}')]
    assert parser.feed("}\n</tool_call>") == []
    assert parser.finish() == []
    assert parser.calls_seen == 1 and not parser.truncated


def test_hermes_arguments_before_name_are_held_until_the_name() -> None:
    text = '<tool_call>\n{"arguments": {"q": "x}"}, "name": "search"}\n</tool_call>'
    check_splits("hermes", text, "", [("search", '{"q": "x}"}')])
    parser = make_parser("hermes")
    assert parser.feed(text[:-20]) == []  # nothing until the name is known
    events = parser.feed(text[-20:])
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCallDelta)] == [
        ("search", ""),
        (None, '{"q": "x}"}'),
    ]


def test_hermes_extra_keys_and_string_arguments() -> None:
    text = '<tool_call>{"id": 7, "name": "f", "extra": {"a": "}"}, "arguments": "{\\"a\\": 1}"}</tool_call>'
    check_splits("hermes", text, "", [("f", '{"a": 1}')])
    check_splits("hermes", '<tool_call>{"name": "f"}</tool_call>', "", [("f", "{}")])


def test_hermes_call_cut_by_finish_is_reported() -> None:
    text = 'Sure.<tool_call>\n{"name": "f", "arguments": {"a": [1, 2'
    check_splits("hermes", text, "Sure.", [("f", '{"a": [1, 2')])
    _, parser = feed("hermes", [text])
    assert parser.truncated and parser.calls_seen == 1
    # cut before the name is known: nothing parseable, still reported
    events, parser = feed("hermes", ['ok <tool_call>\n{"arguments": {}, "na'])
    assert collect(events) == ("ok", []) and parser.truncated and parser.calls_seen == 0
    events, parser = feed("hermes", ["<tool_call>\n"])
    assert events == [] and parser.truncated


def test_hermes_prefilled_call_without_closing_tag() -> None:
    """xgrammar guides: the prefill is fed first, and the model stops after the JSON."""
    text = '<tool_call>\n{"name":"f","arguments":{"a":1}}'
    check_splits("hermes", text, "", [("f", '{"a":1}')])
    _, parser = feed("hermes", ["<tool_call>\n", text[12:]])
    assert not parser.truncated


@pytest.mark.parametrize(
    "text",
    [
        "a < b, and 1<2",
        "use the <tool_call> tag like this",
        "ends with a marker start <tool_ca",
        "<tool_call><b>not json</b>",
        "  leading and trailing whitespace \n\n",
        "<tool_call>\n{}\n</tool_call>",
        '<tool_call>\n{"answer": 42} and more',
        "<",
        "",
    ],
)
def test_hermes_text_that_only_looks_like_markup_is_content(text: str) -> None:
    check_splits("hermes", text, text, [], markup_free=False)
    _, parser = feed("hermes", [text])
    assert not parser.truncated


def test_hermes_whitespace_around_calls_is_not_content() -> None:
    text = (
        '\n  <tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n\n  <tool_call>{"name": "g", "arguments": {}}'
    )
    check_splits("hermes", text + "</tool_call>\n ", "", [("f", "{}"), ("g", "{}")])
    check_splits("hermes", text + "</tool_call>\n Done.\n", "Done.", [("f", "{}"), ("g", "{}")])


def test_hermes_text_after_a_broken_wrapper_is_content() -> None:
    text = '<tool_call>{"name": "f", "arguments": {"a": 1} oops}</tool_call>'
    check_splits("hermes", text, "oops}</tool_call>", [("f", '{"a": 1}')], markup_free=False)


def test_llama3_calls() -> None:
    check_splits("llama3_json", LLAMA_TWO, "", LLAMA_TWO_CALLS)
    check_splits("llama3_json", ' \n{"name": "f", "parameters": {"x": "{;}"}}', "", [("f", '{"x": "{;}"}')])


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        "  Hello {world}",
        "<b>bold</b>",
        "<|python_tag|>print('hi')",
        '{"answer": 42}',
        "  \n",
        "<|pyth",
        "",
    ],
)
def test_llama3_plain_text_is_content_unchanged(text: str) -> None:
    check_splits("llama3_json", text, text, [], markup_free=False)


def test_llama3_cut_and_text_after_calls() -> None:
    text = '{"name": "f", "parameters": {"a": "long'
    check_splits("llama3_json", text, "", [("f", '{"a": "long')])
    assert feed("llama3_json", [text])[1].truncated
    text = '{"name": "f", "parameters": {}}\nThat is all.'
    check_splits("llama3_json", text, "That is all.", [("f", "{}")])


def test_ids_are_unique_and_injectable() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)
    parser = make_parser("hermes", new_id=lambda: "call_fixed")
    events = parser.feed('<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert events[0] == ToolCallDelta(index=0, id="call_fixed", name="f")


def test_formats_and_factory() -> None:
    assert {"hermes", "generic", "llama3_json"} <= FORMATS
    assert isinstance(make_parser("generic"), HermesParser)
    assert isinstance(make_parser("llama3_json"), Llama3JsonParser)
    with pytest.raises(ValueError, match="unknown tool-call format"):
        make_parser("mistral")


def test_long_arguments_one_character_at_a_time_stream_linearly() -> None:
    value = 'x\\"{}[]' * 20_000
    text = f'<tool_call>{{"name": "f", "arguments": {{"v": "{value}"}}}}</tool_call>'
    parser = make_parser("hermes")
    sent = 0
    for ch in text:
        for event in parser.feed(ch):
            assert isinstance(event, ToolCallDelta)
            sent += len(event.arguments)
    assert parser.finish() == [] and sent == len(value) + 9
