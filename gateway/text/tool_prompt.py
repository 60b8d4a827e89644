"""Tools and tool messages into a prompt: as a tool-aware chat template wants them, or, for a
template without tool support, written out as text the plain template renders.

The fallback (``generic``) lists the tools in the system message and shows the call markup the
parser (:mod:`gateway.text.toolcalls`) and the grammar (:mod:`gateway.text.guides`) use; earlier
calls and their results are rendered in the same markup, as ``assistant`` and ``user`` turns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from gateway.core.types import Tool
from gateway.text.guides import EMPTY_PARAMETERS, canonical
from gateway.text.toolcalls import FORMATS

_TOOLS_WORD = re.compile(r"\btools\b")
_HOW: Final = {
    "hermes": '<tool_call>\n{"name":<name>,"arguments":<arguments object>}\n</tool_call>',
    "llama3_json": '{"name":<name>,"parameters":<parameters object>} (and nothing else)',
}


def template_supports_tools(template_source: str) -> bool:
    """Whether a chat template renders tools itself (its source uses a ``tools`` variable)."""
    return _TOOLS_WORD.search(template_source) is not None


def _text(content: Any) -> str:
    """Message content as text: None is empty; a list of parts is its text parts joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return str(content)


def _arguments(raw: Any) -> Any:
    """A call's arguments as the templates want them: parsed, when they are a JSON object."""
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return value if isinstance(value, dict) else raw
    return raw if raw is not None else {}


def _native(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    shaped: list[dict[str, Any]] = []
    for message in messages:
        out = dict(message)
        if out.get("role") == "developer":
            out["role"] = "system"
        out["content"] = _text(out.get("content"))
        calls = out.get("tool_calls")
        if calls:
            out["tool_calls"] = [
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": _arguments(call["function"].get("arguments")),
                    },
                }
                for call in calls
            ]
        elif "tool_calls" in out:
            del out["tool_calls"]
        shaped.append(out)
    return shaped


def _call_text(name: str, arguments: Any, fmt: str) -> str:
    args = _arguments(arguments)
    args_text = canonical(args) if isinstance(args, dict) else str(args)
    if fmt == "llama3_json":
        return f'{{"name":{json.dumps(name, ensure_ascii=False)},"parameters":{args_text}}}'
    return f'<tool_call>\n{{"name":{json.dumps(name, ensure_ascii=False)},"arguments":{args_text}}}\n</tool_call>'


def _system_text(tools: Sequence[Tool], fmt: str) -> str:
    listing = "\n".join(
        canonical(
            {"name": t.name, "description": t.description, "parameters": t.parameters or EMPTY_PARAMETERS}
            if t.description
            else {"name": t.name, "parameters": t.parameters or EMPTY_PARAMETERS}
        )
        for t in tools
    )
    how = _HOW["llama3_json" if fmt == "llama3_json" else "hermes"]
    return f"You can call these tools:\n{listing}\nTo call a tool, reply with:\n{how}"


def _generic(messages: Sequence[Mapping[str, Any]], tools: Sequence[Tool], fmt: str) -> list[dict[str, Any]]:
    shaped: list[dict[str, Any]] = []
    between = "; " if fmt == "llama3_json" else "\n"
    for message in messages:
        role = message.get("role")
        content = _text(message.get("content"))
        if role == "developer":
            role = "system"
        if role == "tool":
            shaped.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            continue
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls:
            markup = between.join(
                _call_text(call["function"]["name"], call["function"].get("arguments"), fmt) for call in calls
            )
            content = f"{content}\n{markup}" if content else markup
        shaped.append({"role": role, "content": content})
    if tools:
        system = _system_text(tools, fmt)
        if shaped and shaped[0]["role"] == "system":
            shaped[0]["content"] = f"{system}\n\n{shaped[0]['content']}" if shaped[0]["content"] else system
        else:
            shaped.insert(0, {"role": "system", "content": system})
    return shaped


def prepare_messages(
    messages: list[dict[str, Any]], tools: Sequence[Tool], fmt: str, native: bool
) -> list[dict[str, Any]]:
    """OpenAI chat messages shaped for the chat template (new dicts; the input is not changed).

    ``native`` (the template supports tools; the caller passes ``tools`` to it): assistant calls get
    their arguments parsed to objects, as Hermes/Qwen/Llama templates want. Otherwise the tools are
    listed in the system message and calls and results become text in ``fmt``'s markup, in the roles
    a plain ChatML template knows. ``developer`` becomes ``system``; content None becomes "".
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown tool-call format {fmt!r}")
    if native:
        return _native(messages)
    return _generic(messages, tools, fmt)
