from __future__ import annotations

import orjson

from gateway.api.formats import ChatFormat, CompletionFormat
from gateway.core.types import ChoiceOutput, FinishReason, Usage


def event(raw: bytes) -> dict[str, object]:
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    value = orjson.loads(raw[6:-2])
    assert isinstance(value, dict)
    return value


def test_chat_chunks_are_openai_chunks() -> None:
    fmt = ChatFormat("chatcmpl-1", 1700000000, "m")
    opening = event(fmt.opening(0))
    assert opening["object"] == "chat.completion.chunk" and opening["id"] == "chatcmpl-1"
    assert opening["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    text = 'quote " backslash \\ newline \n emoji 😀 </script>'
    chunk = event(fmt.delta(1, text))
    assert chunk["choices"] == [{"index": 1, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]
    done = event(fmt.finish(0, FinishReason.LENGTH))
    assert done["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    usage = event(fmt.usage(Usage(3, 4)))
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_chat_whole_response() -> None:
    outputs = [ChoiceOutput(["a"]), ChoiceOutput(["b"], FinishReason.LENGTH)]
    body = ChatFormat("c", 1, "m").whole(outputs, Usage(1, 2))
    assert body["object"] == "chat.completion"
    assert [c["message"]["content"] for c in body["choices"]] == ["a", "b"]  # type: ignore[index]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]  # type: ignore[index]


def test_completion_chunks_and_echo() -> None:
    fmt = CompletionFormat("cmpl-1", 1, "m", echo=["Say: ", "Say: "])
    assert event(fmt.opening(1))["choices"] == [{"index": 1, "text": "Say: ", "logprobs": None, "finish_reason": None}]
    assert event(fmt.finish(0, FinishReason.STOP))["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    whole = fmt.whole([ChoiceOutput(["hi"]), ChoiceOutput(["yo"])], Usage(1, 1))
    assert [c["text"] for c in whole["choices"]] == ["Say: hi", "Say: yo"]  # type: ignore[index]
    assert CompletionFormat("c", 1, "m").opening(0) == b""
