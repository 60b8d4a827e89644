"""The Responses API's output: a Response object, or its stream of typed events.

:class:`ResponseEvents` is the :class:`~gateway.api.formats.ResponseFormat` of ``/v1/responses``: the
shared transport (:mod:`gateway.api.respond`) feeds it the generate path's deltas. Each event is
``event: <type>`` and ``data: <json>``, numbered by ``sequence_number``; a text delta takes a byte
template, the few other events of an item are built as dicts.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.api.context import now
from gateway.core.ids import random_hex
from gateway.core.types import ChoiceOutput, Delta, FinishReason, ToolCallDelta, Usage
from gateway.errors import GatewayError


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


class _Item:
    """One output item as it streams: a message's text, or a function call's arguments."""

    __slots__ = ("call_id", "id", "name", "parts", "position", "ref", "status")

    def __init__(self, position: int, call_id: str | None = None, name: str | None = None) -> None:
        self.id = f"{'msg' if call_id is None else 'fc'}_{random_hex(16)}"
        self.position = position  # its output_index
        self.call_id, self.name = call_id, name
        self.parts: list[str] = []
        self.status = "in_progress"
        # what every text delta of this item repeats, as bytes
        self.ref = b'"item_id":"%s","output_index":%d,"content_index":0,' % (self.id.encode(), position)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def dump(self, content: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if self.call_id is None:
            return {
                "id": self.id,
                "type": "message",
                "status": self.status,
                "role": "assistant",
                "content": [_text_part(self.text)] if content is None else content,
            }
        return {
            "id": self.id,
            "type": "function_call",
            "status": self.status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.text,
        }


_TEXT_DELTA = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":%d,%s'
    b'"delta":%s,"logprobs":[]}\n\n'
)


class ResponseEvents:
    """One response, whole or as its stream of events (the :class:`~gateway.api.formats.ResponseFormat`
    of the Responses API). Items are streamed one after another: a call closes the message before it.

    Text deltas take a byte template; the rest (a handful of events per item) are built as dicts.
    """

    __slots__ = ("_calls", "_created", "_echo", "_id", "_items", "_model", "_open", "_reason", "_seq")

    def __init__(self, response_id: str, created: int, model: str, echo: dict[str, Any]) -> None:
        self._id, self._created, self._model, self._echo = response_id, created, model, echo
        self._seq = 0
        self._items: list[_Item] = []
        self._open: _Item | None = None  # the item being streamed
        self._calls: dict[int, _Item] = {}  # by the call's index in the choice
        self._reason: FinishReason | None = None

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "completed_at": now() if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": self._model,
            "output": output,
            "usage": None if usage is None else _usage(usage),
            **self._echo,
        }

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        seq = self._seq
        self._seq += 1
        data = orjson.dumps({"type": kind, "sequence_number": seq, **payload})
        return b"event: %s\ndata: %s\n\n" % (kind.encode(), data)

    # the stream

    def opening(self, index: int) -> bytes:
        response = self.response("in_progress", [], None)
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    def delta(self, index: int, text: str) -> bytes:
        if not text:
            return b""
        item = self._open
        opened = b""
        if item is None or item.call_id is not None:
            opened, item = self._open_item()
        item.parts.append(text)
        seq = self._seq
        self._seq += 1
        return opened + _TEXT_DELTA % (seq, item.ref, orjson.dumps(text))

    def finish(self, index: int, reason: FinishReason) -> bytes:
        self._reason = reason
        opened = b""
        if not self._items:  # nothing said and nothing called: still a message, an empty one
            opened = self._open_item()[0]
        return opened + self._close("incomplete" if reason is FinishReason.LENGTH else "completed")

    def rich(self, delta: Delta) -> bytes:
        out: list[bytes] = []
        pieces = delta.tool_calls or []
        # arguments of the call being streamed come first: any text with them followed the call
        first = 0
        while first < len(pieces) and pieces[first].name is None and self._is_open(pieces[first]):
            out.append(self._arguments(self._calls[pieces[first].index], pieces[first].arguments))
            first += 1
        out.append(self.delta(delta.index, delta.text))
        for piece in pieces[first:]:
            if piece.name is not None:
                out.append(self._open_call(piece))
            call = self._calls.get(piece.index)
            if call is not None and piece.arguments:
                out.append(self._arguments(call, piece.arguments))
        if delta.finish_reason is not None:
            out.append(self.finish(delta.index, delta.finish_reason))
        return b"".join(out)

    def usage(self, usage: Usage) -> bytes:
        return b""  # the usage is in the closing response

    def closing(self, usage: Usage, include_usage: bool) -> bytes:
        ended = self.finish(0, FinishReason.STOP) if self._reason is None else b""
        status = "incomplete" if self._reason is FinishReason.LENGTH else "completed"
        response = self.response(status, [item.dump() for item in self._items], usage)
        return ended + self._event(f"response.{status}", {"response": response})

    def failure(self, error: GatewayError) -> bytes:
        """An ``error`` event, then ``response.failed`` with the output so far.

        The error event carries ``code``, ``message`` and ``param`` at its top level, as OpenAI's
        reference documents it, and the same error object under ``error``, as OpenAI's servers send
        it and as the official SDKs look for it (they raise an APIError on it).
        """
        if self._open is not None:
            self._open.status = "incomplete"
            self._open = None
        body = error.body()["error"]
        code = body["code"] or body["type"]
        failed = self._event("error", {"code": code, "message": error.message, "param": error.param, "error": body})
        output = [item.dump() for item in self._items]
        response = self.response("failed", output, None, {"code": "server_error", "message": error.message})
        return failed + self._event("response.failed", {"response": response})

    def _is_open(self, piece: ToolCallDelta) -> bool:
        return self._open is not None and self._calls.get(piece.index) is self._open

    def _open_item(self, piece: ToolCallDelta | None = None) -> tuple[bytes, _Item]:
        closed = self._close("completed")
        if piece is None:
            item = _Item(len(self._items))
        else:
            item = _Item(len(self._items), piece.id or f"call_{random_hex(12)}", piece.name)
            self._calls[piece.index] = item
        self._items.append(item)
        self._open = item
        where = {"output_index": item.position}
        if item.call_id is not None:
            return closed + self._event("response.output_item.added", {**where, "item": item.dump()}), item
        added = self._event("response.output_item.added", {**where, "item": item.dump(content=[])})
        part = {"item_id": item.id, **where, "content_index": 0, "part": _text_part("")}
        return closed + added + self._event("response.content_part.added", part), item

    def _open_call(self, piece: ToolCallDelta) -> bytes:
        return self._open_item(piece)[0]

    def _arguments(self, call: _Item, arguments: str) -> bytes:
        if not arguments:
            return b""
        call.parts.append(arguments)
        payload = {"item_id": call.id, "output_index": call.position, "delta": arguments}
        return self._event("response.function_call_arguments.delta", payload)

    def _close(self, status: str) -> bytes:
        """The events that end the item being streamed (none open: nothing)."""
        item = self._open
        if item is None:
            return b""
        self._open = None
        item.status = status
        where = {"item_id": item.id, "output_index": item.position}
        text = item.text
        if item.call_id is None:
            out = self._event("response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []})
            out += self._event("response.content_part.done", {**where, "content_index": 0, "part": _text_part(text)})
        else:
            out = self._event("response.function_call_arguments.done", {**where, "name": item.name, "arguments": text})
        return out + self._event("response.output_item.done", {"output_index": item.position, "item": item.dump()})

    # the whole response

    def whole(self, outputs: list[ChoiceOutput], usage: Usage) -> dict[str, Any]:
        output = outputs[0]
        calls = output.tool_calls
        items: list[_Item] = []
        if output.text or not calls:
            message = _Item(0)
            message.parts.append(output.text)
            items.append(message)
        for call in calls:
            item = _Item(len(items), call.id, call.name)
            item.parts.append(call.arguments)
            items.append(item)
        status = "incomplete" if output.finish_reason is FinishReason.LENGTH else "completed"
        for item in items:
            item.status = "completed"
        items[-1].status = status
        return self.response(status, [item.dump() for item in items], usage)
