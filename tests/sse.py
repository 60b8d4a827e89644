"""Raw SSE parsing for tests: the events of a `text/event-stream` body, as JSON or '[DONE]'."""

from __future__ import annotations

from typing import Any

import orjson


def parse_sse(body: bytes) -> list[Any]:
    events: list[Any] = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block.strip():
            continue
        data = "\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
        assert data, f"SSE block without data: {block!r}"
        events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


def chat_text(events: list[Any], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and "choices" in e
        for c in e["choices"]
        if c["index"] == index
    )


def finish_reasons(events: list[Any]) -> dict[int, str]:
    return {
        c["index"]: c["finish_reason"]
        for e in events
        if isinstance(e, dict) and "choices" in e
        for c in e["choices"]
        if c["finish_reason"] is not None
    }
