"""Validating a batch: its input file read once, as a stream, every line checked and located.

The outcome is either the batch's lines (each pending, or already failed with its error) or, when
no line can run at all (an empty file, too many lines, every line invalid), the errors that fail
the batch, in OpenAI's ``errors`` shape (``code``, ``message``, ``param``, ``line``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.batches.lines import MAX_LINES, Line, LineChecker
from gateway.batches.records import LineSpan

_YIELD_EVERY = 64  # lines checked between turns of the event loop (each is a pydantic validation)
_MAX_REPORTED = 100  # errors listed on a batch that failed validation


@dataclass(slots=True)
class Scan:
    spans: list[LineSpan] = field(default_factory=list)
    checked: list[Line] = field(default_factory=list)  # per span
    failure: list[dict[str, Any]] | None = None  # set: the batch fails with these errors
    model: str | None = None  # the first valid line's model

    @property
    def valid(self) -> int:
        return sum(1 for line in self.checked if line.error is None)


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, int, bytes]]:
    """(line number from 1, byte offset, the line without its end) of each line."""
    pending = b""
    offset = 0  # of ``pending``
    number = 0
    async for chunk in chunks:
        data = pending + chunk if pending else chunk
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            number += 1
            yield number, offset + start, data[start:end]
            start = end + 1
        offset += start
        pending = data[start:]
    if pending:
        yield number + 1, offset, pending


async def scan(chunks: AsyncIterator[bytes], endpoint: str, max_body_bytes: int) -> Scan:
    checker = LineChecker(endpoint, max_body_bytes)
    result = Scan()
    errors: list[dict[str, Any]] = []
    async for number, offset, raw in _lines(chunks):
        length = len(raw)
        text = raw.rstrip(b"\r")
        if not text.strip():
            continue  # blank lines (a trailing newline, an empty last line) are no requests
        if len(result.spans) == MAX_LINES:
            message = f"The input file has more than {MAX_LINES} requests"
            result.failure = [{"code": "too_many_requests", "message": message, "param": None, "line": number}]
            return result
        line = checker.check(text)
        result.spans.append(LineSpan(len(result.spans), offset, length, line.custom_id))
        result.checked.append(line)
        if line.error is not None and len(errors) < _MAX_REPORTED:
            errors.append({"code": line.error.code, "message": line.error.message, "param": None, "line": number})
        elif result.model is None and line.model is not None:
            result.model = line.model
        if len(result.spans) % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
    if not result.spans:
        result.failure = [
            {"code": "empty_file", "message": "The input file has no requests", "param": None, "line": None}
        ]
    elif not result.valid:
        result.failure = errors
    return result
