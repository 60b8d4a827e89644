"""The streaming reader of one JSON tool call, ``{"name": ..., "arguments": ...}``, for the parsers.

One small state machine, pure and synchronous: :class:`CallReader` reads the object a piece at a
time, from just after its ``{``, sends the call's first delta as soon as the name is known and streams
the arguments object's text as it arrives. Keys and values are scanned by regex searches for the
characters that matter (quotes, escapes, brackets), so the work per piece is proportional to the
piece. The per-format parsers in :mod:`gateway.text.toolcalls` find where a call starts and handle
the text around it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Final

from gateway.core.types import ToolCallDelta

Event = str | ToolCallDelta  # what a parser sends: content text, or a tool-call delta

WS: Final = " \t\r\n"  # JSON's whitespace; the parsers' too, around their markup
_ARGS_KEYS: Final = frozenset({"arguments", "parameters"})

_STR_SPECIAL = re.compile(r'["\\]')
_CONTAINER_SPECIAL = re.compile(r'["{}\[\]]')
_SCALAR_END = re.compile(r"[,}\]\s]")


def _push_args(out: list[Event], index: int, fragment: str) -> None:
    if not fragment:
        return
    last = out[-1] if out else None
    if isinstance(last, ToolCallDelta) and last.index == index and last.id is None:
        out[-1] = ToolCallDelta(index=index, arguments=last.arguments + fragment)
    else:
        out.append(ToolCallDelta(index=index, arguments=fragment))


# CallReader states
_KEY_OR_END, _KEY, _COLON, _VALUE_START, _VALUE, _AFTER_VALUE = range(6)
# what a value is
_STRING, _CONTAINER, _SCALAR = range(3)
# what becomes of a value
_SKIP, _NAME, _ARGS, _STREAM = range(4)
# feed results
RUNNING, DONE, ERROR = range(3)


class CallReader:
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
            if c in WS:
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
