"""Incremental SSE parsing for the load generator: ``data:`` payloads out of arbitrary byte chunks."""

from __future__ import annotations


class SSEParser:
    """Feed bytes as they arrive; get the complete events' data payloads (bytes)."""

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        buffer = self._buffer + chunk
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()  # an incomplete last line waits for more bytes
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:  # a blank line ends the event
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":") and other fields (event:, id:, retry:) are ignored
        return events
