"""A batch's result lines, in OpenAI's format, and the log they are appended to as lines finish.

Output file line: ``{"id": "batch_req_…", "custom_id": …, "response": {"status_code": 200,
"request_id": …, "body": {…}}, "error": null}`` with the body the REST route returns. A failed
line goes to the error file with ``error: {code, message}``; when it was a request the API
answered with an HTTP error, ``response`` carries that status and error body as well.

The results log is working state: each line's result is appended as it finishes and where it went
recorded in the catalog; at finalizing the output and error files are assembled from it in input
order, then it is removed. Beside the SQLite catalog it is a local file (:class:`ResultsLog`,
``data_dir/batches/<id>.jsonl``); beside the Redis one, a Redis hash that every replica reads
(:class:`gateway.batches.results_redis.RedisResults`), so a batch taken over on another machine
keeps the results of the lines already done.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.batches.lines import LineError


def line_id() -> str:
    return f"batch_req_{secrets.token_hex(12)}"


def result_line(custom_id: str | None, request_id: str, body: dict[str, Any]) -> bytes:
    response = {"status_code": 200, "request_id": request_id, "body": body}
    document = {"id": line_id(), "custom_id": custom_id, "response": response, "error": None}
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def error_line(custom_id: str | None, request_id: str | None, error: LineError) -> bytes:
    response = None
    if error.error is not None:
        status = error.error.kind.http_status
        response = {"status_code": status, "request_id": request_id, "body": error.error.body()}
    document = {
        "id": line_id(),
        "custom_id": custom_id,
        "response": response,
        "error": {"code": error.code, "message": error.message},
    }
    return orjson.dumps(document) + b"\n"


class Results(Protocol):
    """A batch's results log. Only the batch's lease holder appends."""

    async def append(self, batch_id: str, data: bytes) -> tuple[int, int]:
        """Store ``data``; where it went (two numbers the catalog records for the line)."""
        ...

    async def append_many(self, batch_id: str, lines: Sequence[bytes]) -> list[tuple[int, int]]: ...

    async def read(self, batch_id: str, spots: Sequence[tuple[int, int]]) -> list[bytes | None]:
        """What was stored at each spot; None where it cannot be read back (the log was lost)."""
        ...

    async def remove(self, batch_id: str) -> None: ...

    async def close(self) -> None: ...


class ResultsLog:
    """One append-only file per batch under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, batch_id: str) -> Path:
        return self.root / f"{batch_id}.jsonl"

    async def append(self, batch_id: str, data: bytes) -> tuple[int, int]:
        """Write ``data`` at the end; where it went (offset, length). A torn write left by a crash
        stays unreferenced: the next append goes after it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(batch_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            offset = os.fstat(fd).st_size
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return offset, len(data)

    async def append_many(self, batch_id: str, lines: Sequence[bytes]) -> list[tuple[int, int]]:
        """Several results in one write; where each went."""
        if not lines:
            return []
        offset, _ = await self.append(batch_id, b"".join(lines))
        spans = []
        for line in lines:
            spans.append((offset, len(line)))
            offset += len(line)
        return spans

    async def read(self, batch_id: str, spots: Sequence[tuple[int, int]]) -> list[bytes | None]:
        try:
            fd = os.open(self._path(batch_id), os.O_RDONLY)
        except FileNotFoundError:
            return [None] * len(spots)
        try:
            found: list[bytes | None] = []
            for offset, length in spots:
                try:
                    data = os.pread(fd, length, offset)
                except OSError:
                    data = b""
                found.append(data if len(data) == length else None)
            return found
        finally:
            os.close(fd)

    async def remove(self, batch_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(batch_id).unlink()

    async def close(self) -> None:
        pass
