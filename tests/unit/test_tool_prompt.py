"""Tools and tool messages into prompts: for tool-aware templates and for the generic fallback."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.core.types import Tool
from gateway.text.tokenizer import Tokenizer
from gateway.text.tool_prompt import prepare_messages, template_supports_tools
from gateway.text.toolcalls import parse_all

WEATHER = Tool(
    "get_weather",
    "Current weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
NOW = Tool("now")
CONVERSATION: list[dict[str, Any]] = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and the time?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
]

# the tool-call parts of a Qwen 2.5-style template
QWEN_LIKE = """{%- if tools %}<|im_start|>system
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|im_end|>
{% endif %}{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{{ message.content }}{%- for tool_call in message.tool_calls %}<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}{%- endfor %}<|im_start|>assistant
"""


def test_template_supports_tools(tokenizer: Tokenizer) -> None:
    assert template_supports_tools(QWEN_LIKE)
    assert not template_supports_tools("{% for message in messages %}{{ message.content }}{% endfor %}")
    assert not template_supports_tools("{{ message.toolset }}")
    config = json.loads((tokenizer.directory / "tokenizer_config.json").read_text())
    assert not template_supports_tools(config["chat_template"])  # SmolLM2: the generic fallback


def test_native_shapes_calls_for_the_template() -> None:
    before = copy.deepcopy(CONVERSATION)
    shaped = prepare_messages(CONVERSATION, [WEATHER, NOW], "hermes", native=True)
    assert before == CONVERSATION  # not changed in place
    assert shaped[0] == {"role": "system", "content": "Be brief."}
    assistant = shaped[2]
    assert assistant["content"] == ""
    assert assistant["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    assert shaped[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}
    tools = [{"type": "function", "function": {"name": t.name, "parameters": dict(t.parameters)}} for t in [WEATHER]]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    prompt = env.from_string(QWEN_LIKE).render(messages=shaped, tools=tools)
    _, calls = parse_all(prompt.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0], "hermes")
    assert [(name, json.loads(args)) for name, args in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    assert "<tool_response>\n12:00\n</tool_response>" in prompt


def test_native_keeps_arguments_that_are_not_json() -> None:
    messages: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": "x",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}],
        }
    ]
    assert (
        prepare_messages(messages, [], "hermes", native=True)[0]["tool_calls"][0]["function"]["arguments"] == "not json"
    )


def test_generic_lists_tools_and_renders_the_round_trip() -> None:
    before = copy.deepcopy(CONVERSATION)
    shaped = prepare_messages(CONVERSATION, [WEATHER, NOW], "generic", native=False)
    assert before == CONVERSATION
    assert [m["role"] for m in shaped] == ["system", "user", "assistant", "user", "user"]
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in shaped)
    system = shaped[0]["content"]
    assert system.endswith("\n\nBe brief.")  # the tools text goes before the developer's
    assert '"name":"get_weather","description":"Current weather in a city."' in system
    assert '"parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}' in system
    assert '{"name":"now","parameters":{"type":"object","properties":{}}}' in system
    assert "<tool_call>" in system and "</tool_call>" in system
    assert len(system) < 700  # short: the CPU model has an 8k context
    content, calls = parse_all(shaped[2]["content"], "generic")
    assert content == ""
    assert [(name, json.loads(args)) for name, args in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]
    assert shaped[3]["content"] == '<tool_response>\n{"temp_c": 21}\n</tool_response>'
    assert shaped[4]["content"] == "<tool_response>\n12:00\n</tool_response>"


def test_generic_adds_a_system_message_and_keeps_assistant_text() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "now", "arguments": "{}"}}],
        },
    ]
    shaped = prepare_messages(messages, [NOW], "hermes", native=False)
    assert shaped[0]["role"] == "system" and "now" in shaped[0]["content"]
    assert parse_all(shaped[2]["content"], "hermes") == ("Checking.", [("now", "{}")])
    assert prepare_messages(messages[:1], [], "hermes", native=False) == messages[:1]  # no tools: no system text


def test_generic_llama3_markup_parses_back() -> None:
    shaped = prepare_messages(CONVERSATION, [WEATHER, NOW], "llama3_json", native=False)
    assert '"parameters"' in shaped[0]["content"] and "<tool_call>" not in shaped[0]["content"]
    _, calls = parse_all(shaped[2]["content"], "llama3_json")
    assert [name for name, _ in calls] == ["get_weather", "now"]


def test_generic_prompt_renders_with_the_plain_template(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.apply_chat_template(prepare_messages(CONVERSATION, [WEATHER, NOW], "generic", native=False))
    assert prompt.startswith("<|im_start|>system\nYou can call these tools:")
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>'
        in prompt
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert len(tokenizer.encode(prompt)) < 400


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="format"):
        prepare_messages([], [], "mistral", native=False)
