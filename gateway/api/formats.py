"""OpenAI response shapes for chat and completions, streamed and whole.

Streamed chunks are byte templates filled per delta with ``orjson`` for the text alone: the parts
that never change within a request are built once (see architecture.md, "per-token work").
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from gateway.core.types import FinishReason, Usage

_FINISH = {None: b"null", FinishReason.STOP: b'"stop"', FinishReason.LENGTH: b'"length"'}


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
    def usage(self, usage: Usage) -> bytes: ...
    def whole(self, texts: list[str], reasons: list[FinishReason], usage: Usage) -> dict[str, Any]: ...


class _Format:
    """What every chunk of one response shares, built once per request."""

    __slots__ = ("_created", "_head", "_id", "_model", "_object")

    def __init__(self, request_id: str, created: int, model: str, chunk_object: str) -> None:
        self._id, self._created, self._model, self._object = request_id, created, model, chunk_object
        self._head = _head(request_id, chunk_object, created, model) + b'"choices":[{"index":'

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

    def __init__(self, request_id: str, created: int, model: str) -> None:
        super().__init__(request_id, created, model, "chat.completion.chunk")

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

    def whole(self, texts: list[str], reasons: list[FinishReason], usage: Usage) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": str(reason),
            }
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        return self._whole("chat.completion", choices, usage)


class CompletionFormat(_Format):
    __slots__ = ("_echo",)

    def __init__(self, request_id: str, created: int, model: str, echo: list[str] | None = None) -> None:
        super().__init__(request_id, created, model, "text_completion")
        self._echo = echo

    def opening(self, index: int) -> bytes:
        if not self._echo or not self._echo[index]:
            return b""
        return self.delta(index, self._echo[index])

    def delta(self, index: int, text: str) -> bytes:
        return self._head + b'%d,"text":%s,"logprobs":null,"finish_reason":null}]}\n\n' % (index, orjson.dumps(text))

    def finish(self, index: int, reason: FinishReason) -> bytes:
        return self._head + b'%d,"text":"","logprobs":null,"finish_reason":%s}]}\n\n' % (index, _FINISH[reason])

    def whole(self, texts: list[str], reasons: list[FinishReason], usage: Usage) -> dict[str, Any]:
        echo = self._echo
        choices = [
            {"index": i, "text": (echo[i] if echo else "") + text, "logprobs": None, "finish_reason": str(reason)}
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        return self._whole("text_completion", choices, usage)
