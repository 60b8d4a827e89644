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

Arguments stream as they arrive when ``"name"`` comes before ``"arguments"``; otherwise the call is
held until its name is known. The arguments sent are the model's own JSON text of the object.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable
from typing import Final, Protocol

from gateway.core.types import ToolCallDelta

Event = str | ToolCallDelta

FORMATS: Final = frozenset({"hermes", "generic", "llama3_json"})

_ALNUM: Final = string.ascii_letters + string.digits
_WS: Final = " \t\r\n"
_OPEN: Final = "<tool_call>"
_CLOSE: Final = "</tool_call>"
_PYTHON_TAG: Final = "<|python_tag|>"
_ARGS_KEYS: Final = frozenset({"arguments", "parameters"})

_STR_SPECIAL = re.compile(r'["\\]')
_CONTAINER_SPECIAL = re.compile(r'["{}\[\]]')
_SCALAR_END = re.compile(r"[,}\]\s]")


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


def _push_args(out: list[Event], index: int, fragment: str) -> None:
    if not fragment:
        return
    last = out[-1] if out else None
    if isinstance(last, ToolCallDelta) and last.index == index and last.id is None:
        out[-1] = ToolCallDelta(index=index, arguments=last.arguments + fragment)
    else:
        out.append(ToolCallDelta(index=index, arguments=fragment))


def _marker_tail(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``marker``."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


# _CallReader states
_KEY_OR_END, _KEY, _COLON, _VALUE_START, _VALUE, _AFTER_VALUE = range(6)
# what a value is
_STRING, _CONTAINER, _SCALAR = range(3)
# what becomes of a value
_SKIP, _NAME, _ARGS, _STREAM = range(4)
# feed results
RUNNING, DONE, ERROR = range(3)


class _CallReader:
    """Reads one ``{"name": ..., "arguments": ...}`` object, from just after its ``{``.

    It sends the call's first delta as soon as the name is known, then streams the arguments
    object's text (or sends it whole when it came before the name). Until the first delta it keeps
    the text it read (``raw``), so a caller can turn what proved not to be a call back into content.
    """

    __slots__ = (
        "_args_done",
        "_args_pending",
        "_cap",
        "_depth",
        "_esc",
        "_in_str",
        "_key",
        "_kind",
        "_new_id",
        "_state",
        "_use",
        "header_sent",
        "index",
        "raw",
    )

    def __init__(self, index: int, new_id: Callable[[], str]) -> None:
        self.index = index
        self._new_id = new_id
        self._state = _KEY_OR_END
        self._key = ""
        self._cap: list[str] = []
        self._kind = _SCALAR
        self._use = _SKIP
        self._depth = 0
        self._in_str = False
        self._esc = False
        self._args_done = False
        self._args_pending: str | None = None
        self.header_sent = False
        self.raw: list[str] | None = ["{"]

    def feed(self, s: str, i: int, out: list[Event]) -> tuple[int, int]:
        """Read ``s[i:]``: (RUNNING, len(s)), or (DONE | ERROR, the index of the first unread char)."""
        start = i
        status, i = self._run(s, i, out)
        if self.raw is not None:
            self.raw.append(s[start:i])
        return status, i

    def abort(self, out: list[Event]) -> None:
        """The object broke off after its name (bad syntax): settle the call with what it has."""
        self._close(out)

    def _run(self, s: str, i: int, out: list[Event]) -> tuple[int, int]:
        n = len(s)
        while i < n:
            state = self._state
            if state in (_KEY, _VALUE):
                j = self._scan(s, i)
                end = n if j < 0 else j
                if end > i:
                    if state == _KEY:
                        self._cap.append(s[i:end])
                    elif self._use == _STREAM:
                        _push_args(out, self.index, s[i:end])
                    elif self._use != _SKIP:
                        self._cap.append(s[i:end])
                if j < 0:
                    return RUNNING, n
                i = j
                if state == _KEY:
                    self._key = _decode(self._take()) or ""
                    self._state = _COLON
                elif not self._value_done(out):
                    return ERROR, i
                continue
            c = s[i]
            if c in _WS:
                i += 1
                continue
            if state == _KEY_OR_END:
                if c == '"':
                    self._begin(_STRING)
                    self._cap.append(c)
                    self._state = _KEY
                    i += 1
                elif c == "}":
                    return (DONE if self._close(out) else ERROR), i + 1
                else:
                    return ERROR, i
            elif state == _COLON:
                if c != ":":
                    return ERROR, i
                self._state = _VALUE_START
                i += 1
            elif state == _VALUE_START:
                self._start_value(c)
                if self._kind != _SCALAR:
                    if self._use == _STREAM:
                        _push_args(out, self.index, c)
                    elif self._use != _SKIP:
                        self._cap.append(c)
                    i += 1
            elif c == ",":  # _AFTER_VALUE
                self._state = _KEY_OR_END
                i += 1
            elif c == "}":
                return (DONE if self._close(out) else ERROR), i + 1
            else:
                return ERROR, i
        return RUNNING, n

    def _begin(self, kind: int) -> None:
        self._kind = kind
        self._depth = 1 if kind == _CONTAINER else 0
        self._in_str = kind == _STRING
        self._esc = False

    def _start_value(self, c: str) -> None:
        self._state = _VALUE
        self._begin(_STRING if c == '"' else _CONTAINER if c in "{[" else _SCALAR)
        key = self._key
        if key == "name" and not self.header_sent:
            self._use = _NAME
        elif key in _ARGS_KEYS and not self._args_done and self._args_pending is None:
            self._use = _STREAM if (c == "{" and self.header_sent) else _ARGS
        else:
            self._use = _SKIP

    def _take(self) -> str:
        text = "".join(self._cap)
        self._cap.clear()
        return text

    def _value_done(self, out: list[Event]) -> bool:
        """A value ended; False when it makes this object no call."""
        use = self._use
        self._use = _SKIP
        self._state = _AFTER_VALUE
        if use == _STREAM:
            self._args_done = True
        elif use == _ARGS:
            text = self._take()
            if self._kind == _STRING:  # arguments given as a JSON string holding the object
                decoded = _decode(text)
                text = decoded if decoded is not None else text
            if self.header_sent:
                self._args_done = True
                _push_args(out, self.index, text)
            else:
                self._args_pending = text
        elif use == _NAME:
            name = _decode(self._take())
            if not name:
                return False
            self.header_sent = True
            self.raw = None
            out.append(ToolCallDelta(index=self.index, id=self._new_id(), name=name))
            if self._args_pending is not None:
                self._args_done = True
                _push_args(out, self.index, self._args_pending)
        return True

    def _close(self, out: list[Event]) -> bool:
        if not self.header_sent:
            return False
        if not self._args_done:
            self._args_done = True
            _push_args(out, self.index, "{}")
        return True

    def _scan(self, s: str, i: int) -> int:
        """Index just past the end of the current key or value in ``s[i:]``, or -1 if not in it."""
        if self._kind == _SCALAR:
            m = _SCALAR_END.search(s, i)
            return -1 if m is None else m.start()
        while True:
            if self._in_str:
                i = self._scan_string(s, i)
                if i < 0:
                    return -1
                self._in_str = False
                if self._kind == _STRING:
                    return i
            m = _CONTAINER_SPECIAL.search(s, i)
            if m is None:
                return -1
            i = m.end()
            c = m.group()
            if c == '"':
                self._in_str = True
            elif c in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return i

    def _scan_string(self, s: str, i: int) -> int:
        n = len(s)
        if self._esc:
            if i >= n:
                return -1
            self._esc = False
            i += 1
        while True:
            m = _STR_SPECIAL.search(s, i)
            if m is None:
                return -1
            k = m.start()
            if s[k] == '"':
                return k + 1
            if k + 1 >= n:
                self._esc = True
                return -1
            i = k + 2


def _decode(literal: str) -> str | None:
    try:
        value = json.loads(literal)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


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
        self._reader: _CallReader | None = None
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
        content = content.lstrip(_WS) if self._drop_ws else self._held_ws + content
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
        stripped = body.rstrip(_WS)
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
        while j < n and s[j] in _WS:
            j += 1
        self._opened += s[i:j]
        if j == n:
            return n
        if s[j] == "{":
            self._reader = _CallReader(self.calls_seen, self._new_id)
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
            if self._closed == 0 and c in _WS:
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
        self._reader: _CallReader | None = None
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
            elif c not in _WS:
                if c != "{":
                    break
                self._reader = _CallReader(self.calls_seen, self._new_id)
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
            if c in _WS or c == ";":
                i += 1
            elif c == "{":
                self._reader = _CallReader(self.calls_seen, self._new_id)
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
