"""Streaming tool-call parsers: one choice's text pieces in, content text and tool-call deltas out.

One small state machine per format, pure and synchronous. Each character of the output is looked at
a bounded number of times (a held-back marker prefix is at most a marker long), so the work per piece
is proportional to the piece, never to the text so far.

Formats:

* ``hermes`` (Hermes, Qwen 2.5+): ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``,
  several in a row, possibly after some content text.
* ``generic``: the fallback for chat templates without tool support; the same markup as ``hermes``
  (the tools and this markup are written into the system prompt), so the same parser.
* ``llama3_json`` (Llama 3.1/3.2 JSON tool calling): the whole output is
  ``{"name": "f", "parameters": {...}}`` (optionally after ``<|python_tag|>``; several calls
  separated by ``;``); output that does not start with ``{`` is plain content.

Each parser finds where a call's JSON object starts and hands the object to a
:class:`~gateway.text.call_reader.CallReader`. Arguments stream as they arrive when ``"name"`` comes
before ``"arguments"``; otherwise the call is held until its name is known. The arguments sent are
the model's own JSON text of the object.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from typing import Final, Protocol

from gateway.text.call_reader import ERROR, RUNNING, WS, CallReader, Event

__all__ = [
    "FORMATS",
    "Event",
    "HermesParser",
    "Llama3JsonParser",
    "ToolCallParser",
    "collect",
    "make_parser",
    "new_call_id",
    "parse_all",
]

FORMATS: Final = frozenset({"hermes", "generic", "llama3_json"})

_ALNUM: Final = string.ascii_letters + string.digits
_OPEN: Final = "<tool_call>"
_CLOSE: Final = "</tool_call>"
_PYTHON_TAG: Final = "<|python_tag|>"


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 random alphanumerics."""
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def _push_text(out: list[Event], text: str) -> None:
    if not text:
        return
    if out and isinstance(out[-1], str):
        out[-1] += text
    else:
        out.append(text)


def _marker_tail(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


class ToolCallParser(Protocol):
    """What every format's parser offers."""

    calls_seen: int  # calls whose first delta was sent: finish_reason "tool_calls" when > 0
    truncated: bool  # the text ended inside a call (e.g. cut by max_tokens)

    def feed(self, text: str) -> list[Event]: ...

    def finish(self) -> list[Event]: ...


# HermesParser states
_TEXT, _OPENED, _CALL, _CLOSING = range(4)


class HermesParser:
    """``<tool_call>{...}</tool_call>`` markup (formats ``hermes`` and ``generic``).

    Whitespace next to the markup (before a call, between calls, after the last) is not content;
    a ``<tool_call>`` not followed by a JSON object is content after all.
    """

    __slots__ = (
        "_closed",
        "_drop_ws",
        "_held_marker",
        "_held_ws",
        "_new_id",
        "_open_ws",
        "_opened",
        "_reader",
        "_state",
        "calls_seen",
        "truncated",
    )

    def __init__(self, new_id: Callable[[], str] = new_call_id) -> None:
        self._new_id = new_id
        self._state = _TEXT
        self._held_ws = ""  # trailing whitespace of the content so far, not yet sent
        self._held_marker = ""  # trailing text that may be the start of <tool_call>
        self._drop_ws = False  # a call just ended: whitespace before the next text is not content
        self._opened = ""  # <tool_call> and the whitespace after it, while its { is awaited
        self._open_ws = ""  # the held whitespace that came before that <tool_call>
        self._closed = 0  # characters of </tool_call> matched
        self._reader: CallReader | None = None
        self.calls_seen = 0
        self.truncated = False

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        i = 0
        n = len(text)
        while i < n:
            state = self._state
            if state == _TEXT:
                i = self._text(text, i, out)
            elif state == _OPENED:
                i = self._after_open(text, i, out)
            elif state == _CALL:
                i = self._call(text, i, out)
            else:
                i = self._closing(text, i, out)
        return out

    def finish(self) -> list[Event]:
        out: list[Event] = []
        state = self._state
        if state == _TEXT:
            if self._held_marker:
                _push_text(out, ("" if self._drop_ws else self._held_ws) + self._held_marker)
            elif self._held_ws and self.calls_seen == 0:
                _push_text(out, self._held_ws)
        elif state in (_OPENED, _CALL):
            self.truncated = True
        self._held_ws = self._held_marker = self._opened = ""
        self._reader = None
        self._state = _TEXT
        return out

    def _emit(self, out: list[Event], content: str) -> None:
        """Send content that ends in non-whitespace, with the whitespace held before it."""
        content = content.lstrip(WS) if self._drop_ws else self._held_ws + content
        self._held_ws = ""
        self._drop_ws = False
        _push_text(out, content)

    def _text(self, s: str, i: int, out: list[Event]) -> int:
        buf = self._held_marker + s[i:] if self._held_marker else s[i:]
        self._held_marker = ""
        at = buf.find(_OPEN)
        if at >= 0:
            body = buf[:at]
            rest = len(s) - (len(buf) - at - len(_OPEN))
        else:
            tail = _marker_tail(buf, _OPEN)
            body = buf[: len(buf) - tail]
            self._held_marker = buf[len(buf) - tail :]
            rest = len(s)
        stripped = body.rstrip(WS)
        if stripped:
            self._emit(out, stripped)
            self._held_ws = body[len(stripped) :]
        else:
            self._held_ws += body
        if at >= 0:
            self._open_ws = "" if self._drop_ws else self._held_ws
            self._held_ws = ""
            self._opened = _OPEN
            self._state = _OPENED
        return rest

    def _after_open(self, s: str, i: int, out: list[Event]) -> int:
        n = len(s)
        j = i
        while j < n and s[j] in WS:
            j += 1
        self._opened += s[i:j]
        if j == n:
            return n
        if s[j] == "{":
            self._reader = CallReader(self.calls_seen, self._new_id)
            self._state = _CALL
            return j + 1
        # not a call: the markup was content after all
        _push_text(out, self._open_ws + self._opened)
        self._drop_ws = False
        self._opened = ""
        self._state = _TEXT
        return j

    def _call(self, s: str, i: int, out: list[Event]) -> int:
        reader = self._reader
        assert reader is not None
        status, j = reader.feed(s, i, out)
        if reader.header_sent:
            self.calls_seen = reader.index + 1
        if status == RUNNING:
            return j
        if status == ERROR and reader.raw is not None:  # no call: give the text back as content
            self._held_ws = ""
            self._drop_ws = False
            _push_text(out, self._open_ws + self._opened + "".join(reader.raw))
            self._reader = None
            self._opened = ""
            self._state = _TEXT
            return j
        reader.abort(out)
        self._reader = None
        self._opened = ""
        self._closed = 0
        self._state = _CLOSING
        return j

    def _closing(self, s: str, i: int, out: list[Event]) -> int:
        n = len(s)
        while i < n:
            c = s[i]
            if self._closed == 0 and c in WS:
                i += 1
                continue
            if c == _CLOSE[self._closed]:
                self._closed += 1
                i += 1
                if self._closed == len(_CLOSE):
                    break
                continue
            # no closing tag: what came is content (whitespace after the call dropped)
            self._held_marker = _CLOSE[: self._closed]
            self._to_text_after_call()
            return i
        else:
            return n
        self._to_text_after_call()
        return i

    def _to_text_after_call(self) -> None:
        self._closed = 0
        self._held_ws = ""
        self._drop_ws = True
        self._state = _TEXT


# Llama3JsonParser states
_START, _L_CALL, _BETWEEN, _PLAIN = range(4)


class Llama3JsonParser:
    """Llama 3.1/3.2 JSON tool calls: ``{"name": ..., "parameters": {...}}`` as the whole output.

    Output whose first non-whitespace text (after an optional ``<|python_tag|>``) is not ``{`` is
    content, sent unchanged. So is a ``{...}`` object that proves to be no call.
    """

    __slots__ = ("_held", "_new_id", "_reader", "_state", "_tag", "calls_seen", "truncated")

    def __init__(self, new_id: Callable[[], str] = new_call_id) -> None:
        self._new_id = new_id
        self._state = _START
        self._held = ""  # leading whitespace / python tag, until the first real character decides
        self._tag = 0  # characters of <|python_tag|> matched
        self._reader: CallReader | None = None
        self.calls_seen = 0
        self.truncated = False

    def feed(self, text: str) -> list[Event]:
        out: list[Event] = []
        i = 0
        n = len(text)
        while i < n:
            state = self._state
            if state == _PLAIN:
                _push_text(out, text[i:])
                break
            if state == _START:
                i = self._start(text, i, out)
            elif state == _L_CALL:
                i = self._call(text, i, out)
            else:
                i = self._between(text, i, out)
        return out

    def finish(self) -> list[Event]:
        out: list[Event] = []
        if self._state == _START:
            _push_text(out, self._held)
        elif self._state == _L_CALL:
            self.truncated = True
        self._held = ""
        self._reader = None
        self._state = _PLAIN
        return out

    def _start(self, s: str, i: int, out: list[Event]) -> int:
        n = len(s)
        tag = _PYTHON_TAG
        while i < n:
            c = s[i]
            if 0 < self._tag < len(tag):  # inside a possible <|python_tag|>
                if c != tag[self._tag]:
                    break
                self._tag += 1
            elif c == tag[0] and self._tag == 0:
                self._tag = 1
            elif c not in WS:
                if c != "{":
                    break
                self._reader = CallReader(self.calls_seen, self._new_id)
                self._state = _L_CALL
                return i + 1
            self._held += c
            i += 1
        else:
            return n
        self._state = _PLAIN  # not a call: all of it is content
        _push_text(out, self._held)
        self._held = ""
        return i

    def _call(self, s: str, i: int, out: list[Event]) -> int:
        reader = self._reader
        assert reader is not None
        status, j = reader.feed(s, i, out)
        if reader.header_sent:
            self.calls_seen = reader.index + 1
        if status == RUNNING:
            return j
        self._reader = None
        if status == ERROR and reader.raw is not None:  # no call: all of it is content
            _push_text(out, self._held + "".join(reader.raw))
            self._held = ""
            self._state = _PLAIN
            return j
        reader.abort(out)
        self._held = ""
        self._state = _BETWEEN
        return j

    def _between(self, s: str, i: int, out: list[Event]) -> int:
        n = len(s)
        while i < n:
            c = s[i]
            if c in WS or c == ";":
                i += 1
            elif c == "{":
                self._reader = CallReader(self.calls_seen, self._new_id)
                self._state = _L_CALL
                return i + 1
            else:  # text after the calls is content
                self._state = _PLAIN
                return i
        return n


def make_parser(fmt: str, new_id: Callable[[], str] = new_call_id) -> ToolCallParser:
    """The streaming parser for tool-call format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt in ("hermes", "generic"):
        return HermesParser(new_id)
    if fmt == "llama3_json":
        return Llama3JsonParser(new_id)
    raise ValueError(f"unknown tool-call format {fmt!r} (known: {', '.join(sorted(FORMATS))})")


def collect(events: list[Event]) -> tuple[str, list[tuple[str, str]]]:
    """Content and (name, arguments) calls assembled from a parser's events."""
    content: list[str] = []
    names: list[str] = []
    args: list[list[str]] = []
    for event in events:
        if isinstance(event, str):
            content.append(event)
        elif event.name is not None:
            names.append(event.name)
            args.append([event.arguments])
        else:
            args[event.index].append(event.arguments)
    return "".join(content), [(name, "".join(parts)) for name, parts in zip(names, args, strict=True)]


def parse_all(text: str, fmt: str) -> tuple[str, list[tuple[str, str]]]:
    """A whole (non-streamed) output: its content and its calls as (name, arguments JSON)."""
    parser = make_parser(fmt)
    return collect(parser.feed(text) + parser.finish())
