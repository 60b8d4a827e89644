"""OpenAI response shapes for chat and completions, streamed and whole.

Streamed chunks are byte templates filled per delta with ``orjson`` for the text alone: the parts
that never change within a request are built once (see architecture.md, "per-token work").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from gateway.core.types import ChoiceOutput, Delta, FinishReason, TokenLogprob, ToolCall, Usage
from gateway.errors import GatewayError

_FINISH = {
    None: b"null",
    FinishReason.STOP: b'"stop"',
    FinishReason.LENGTH: b'"length"',
    FinishReason.TOOL_CALLS: b'"tool_calls"',
}
# OpenAI's logprob for a token the model could not produce (JSON has no -inf)
_FLOOR = -9999.0
# a token id as its text and UTF-8 bytes (the tokenizer's table)
TokenPiece = Callable[[int], tuple[str, bytes]]


def _head(request_id: str, obj: str, created: int, model: str) -> bytes:
    return b'data: {"id":%s,"object":"%s","created":%d,"model":%s,' % (
        orjson.dumps(request_id),
        obj.encode(),
        created,
        orjson.dumps(model),
    )


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ResponseFormat(Protocol):
    """How one endpoint writes deltas; the generate path and the transport are shared."""

    def opening(self, index: int) -> bytes: ...
    def delta(self, index: int, text: str) -> bytes: ...
    def finish(self, index: int, reason: FinishReason) -> bytes: ...
    def rich(self, delta: Delta) -> bytes: ...
    def usage(self, usage: Usage) -> bytes: ...
    def closing(self, usage: Usage, include_usage: bool) -> bytes: ...
    def failure(self, error: GatewayError) -> bytes: ...
    def whole(self, outputs: list[ChoiceOutput], usage: Usage) -> dict[str, Any]: ...


def _logprob(value: float) -> float:
    return value if value > _FLOOR else _FLOOR


class _Format:
    """What every chunk of one response shares, built once per request.

    Plain text deltas take byte templates (:meth:`delta`, :meth:`finish`); a delta that carries
    logprobs or tool calls is built as a dict (:meth:`rich`), a cost paid only by requests that ask.
    """

    __slots__ = ("_created", "_head", "_id", "_model", "_object", "_piece")

    def __init__(self, request_id: str, created: int, model: str, chunk_object: str, piece: TokenPiece | None) -> None:
        self._id, self._created, self._model, self._object = request_id, created, model, chunk_object
        self._head = _head(request_id, chunk_object, created, model) + b'"choices":[{"index":'
        self._piece = piece

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        return sse_event(
            {
                "id": self._id,
                "object": self._object,
                "created": self._created,
                "model": self._model,
                "choices": [choice],
            }
        )

    def _token(self, token: int) -> tuple[str, bytes]:
        return self._piece(token) if self._piece is not None else (str(token), b"")

    def usage(self, usage: Usage) -> bytes:
        return sse_event(
            {
                "id": self._id,
                "object": self._object,
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": usage.as_dict(),
            }
        )

    def closing(self, usage: Usage, include_usage: bool) -> bytes:
        """What ends a stream once every delta went out: the usage chunk when asked, then [DONE]."""
        return self.usage(usage) + SSE_DONE if include_usage else SSE_DONE

    def failure(self, error: GatewayError) -> bytes:
        """An error in-band, once the stream has started: one ``data: {"error": ...}`` event."""
        return sse_event(error.body())

    def _whole(self, obj: str, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": obj,
            "created": self._created,
            "model": self._model,
            "choices": choices,
            "usage": usage.as_dict(),
            "system_fingerprint": None,
        }


class ChatFormat(_Format):
    __slots__ = ()

    def __init__(self, request_id: str, created: int, model: str, piece: TokenPiece | None = None) -> None:
        super().__init__(request_id, created, model, "chat.completion.chunk", piece)

    def opening(self, index: int) -> bytes:
        return (
            self._head
            + b'%d,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n' % index
        )

    def delta(self, index: int, text: str) -> bytes:
        return self._head + b'%d,"delta":{"content":%s},"logprobs":null,"finish_reason":null}]}\n\n' % (
            index,
            orjson.dumps(text),
        )

    def finish(self, index: int, reason: FinishReason) -> bytes:
        return self._head + b'%d,"delta":{},"logprobs":null,"finish_reason":%s}]}\n\n' % (index, _FINISH[reason])

    def rich(self, delta: Delta) -> bytes:
        body: dict[str, Any] = {}
        if delta.text or not delta.tool_calls:
            body["content"] = delta.text
        if delta.tool_calls:
            calls: list[dict[str, Any]] = []
            for call in delta.tool_calls:
                if call.name is not None:  # a call's first delta
                    calls.append(
                        {
                            "index": call.index,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                    )
                else:
                    calls.append({"index": call.index, "function": {"arguments": call.arguments}})
            body["tool_calls"] = calls
        reason = None if delta.finish_reason is None else str(delta.finish_reason)
        logprobs = None if delta.logprobs is None else {"content": self._logprobs(delta.logprobs)}
        return self._chunk({"index": delta.index, "delta": body, "logprobs": logprobs, "finish_reason": reason})

    def _logprobs(self, tokens: list[TokenLogprob]) -> list[dict[str, Any]]:
        out = []
        for token in tokens:
            text, raw = self._token(token.id)
            top = []
            for alt, value in token.top:
                alt_text, alt_raw = self._token(alt)
                top.append({"token": alt_text, "logprob": _logprob(value), "bytes": list(alt_raw)})
            out.append({"token": text, "logprob": _logprob(token.logprob), "bytes": list(raw), "top_logprobs": top})
        return out

    def whole(self, outputs: list[ChoiceOutput], usage: Usage) -> dict[str, Any]:
        choices = []
        for i, output in enumerate(outputs):
            calls = output.tool_calls
            message: dict[str, Any] = {"role": "assistant", "content": output.text or None, "refusal": None}
            if calls:
                message["tool_calls"] = [_tool_call(call) for call in calls]
            elif message["content"] is None:
                message["content"] = ""
            logprobs = None if output.logprobs is None else {"content": self._logprobs(output.logprobs)}
            choices.append(
                {"index": i, "message": message, "logprobs": logprobs, "finish_reason": str(output.finish_reason)}
            )
        return self._whole("chat.completion", choices, usage)


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


class CompletionFormat(_Format):
    __slots__ = ("_echo", "_offsets")

    def __init__(
        self,
        request_id: str,
        created: int,
        model: str,
        echo: list[str] | None = None,
        piece: TokenPiece | None = None,
    ) -> None:
        super().__init__(request_id, created, model, "text_completion", piece)
        self._echo = echo
        self._offsets: dict[int, int] = {}  # per choice: the text offset of its next token

    def opening(self, index: int) -> bytes:
        if not self._echo or not self._echo[index]:
            return b""
        return self.delta(index, self._echo[index])

    def delta(self, index: int, text: str) -> bytes:
        return self._head + b'%d,"text":%s,"logprobs":null,"finish_reason":null}]}\n\n' % (index, orjson.dumps(text))

    def finish(self, index: int, reason: FinishReason) -> bytes:
        return self._head + b'%d,"text":"","logprobs":null,"finish_reason":%s}]}\n\n' % (index, _FINISH[reason])

    def rich(self, delta: Delta) -> bytes:
        reason = None if delta.finish_reason is None else str(delta.finish_reason)
        logprobs = None if delta.logprobs is None else self._logprobs(delta.index, delta.logprobs)
        return self._chunk({"index": delta.index, "text": delta.text, "logprobs": logprobs, "finish_reason": reason})

    def _logprobs(self, index: int, tokens: list[TokenLogprob]) -> dict[str, Any]:
        """The legacy shape: parallel lists, ``top_logprobs`` as {token: logprob} per position."""
        offset = self._offsets.get(index)
        if offset is None:
            offset = len(self._echo[index]) if self._echo else 0
        texts, values, tops, offsets = [], [], [], []
        for token in tokens:
            text = self._token(token.id)[0]
            texts.append(text)
            values.append(_logprob(token.logprob))
            tops.append({self._token(alt)[0]: _logprob(value) for alt, value in token.top} or None)
            offsets.append(offset)
            offset += len(text)
        self._offsets[index] = offset
        has_top = any(top is not None for top in tops)
        return {
            "tokens": texts,
            "token_logprobs": values,
            "top_logprobs": tops if has_top else None,
            "text_offset": offsets,
        }

    def whole(self, outputs: list[ChoiceOutput], usage: Usage) -> dict[str, Any]:
        echo = self._echo
        choices = [
            {
                "index": i,
                "text": (echo[i] if echo else "") + output.text,
                "logprobs": None if output.logprobs is None else self._logprobs(i, output.logprobs),
                "finish_reason": str(output.finish_reason),
            }
            for i, output in enumerate(outputs)
        ]
        return self._whole("text_completion", choices, usage)
