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


class ChatFormat:
    __slots__ = ("_created", "_head", "_id", "_model")

    def __init__(self, request_id: str, created: int, model: str) -> None:
        self._id, self._created, self._model = request_id, created, model
        self._head = _head(request_id, "chat.completion.chunk", created, model) + b'"choices":[{"index":'

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

    def usage(self, usage: Usage) -> bytes:
        return sse_event(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": usage.as_dict(),
            }
        )

    def whole(self, texts: list[str], reasons: list[FinishReason], usage: Usage) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": str(reason),
                }
                for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
            ],
            "usage": usage.as_dict(),
            "system_fingerprint": None,
        }


class CompletionFormat:
    __slots__ = ("_created", "_echo", "_head", "_id", "_model")

    def __init__(self, request_id: str, created: int, model: str, echo: list[str] | None = None) -> None:
        self._id, self._created, self._model = request_id, created, model
        self._echo = echo
        self._head = _head(request_id, "text_completion", created, model) + b'"choices":[{"index":'

    def opening(self, index: int) -> bytes:
        if not self._echo or not self._echo[index]:
            return b""
        return self.delta(index, self._echo[index])

    def delta(self, index: int, text: str) -> bytes:
        return self._head + b'%d,"text":%s,"logprobs":null,"finish_reason":null}]}\n\n' % (index, orjson.dumps(text))

    def finish(self, index: int, reason: FinishReason) -> bytes:
        return self._head + b'%d,"text":"","logprobs":null,"finish_reason":%s}]}\n\n' % (index, _FINISH[reason])

    def usage(self, usage: Usage) -> bytes:
        return sse_event(
            {
                "id": self._id,
                "object": "text_completion",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": usage.as_dict(),
            }
        )

    def whole(self, texts: list[str], reasons: list[FinishReason], usage: Usage) -> dict[str, Any]:
        echo = self._echo
        return {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": i,
                    "text": (echo[i] if echo else "") + text,
                    "logprobs": None,
                    "finish_reason": str(reason),
                }
                for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
            ],
            "usage": usage.as_dict(),
            "system_fingerprint": None,
        }
