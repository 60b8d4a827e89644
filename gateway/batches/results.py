"""A batch's result lines, in OpenAI's format, and the log they are appended to as lines finish.

Output file line: ``{"id": "batch_req_…", "custom_id": …, "response": {"status_code": 200,
"request_id": …, "body": {…}}, "error": null}`` with the body the REST route returns. A failed
line goes to the error file with ``error: {code, message}``; when it was a request the API
answered with an HTTP error, ``response`` carries that status and error body as well.

The results log is local working state (``data_dir/batches/<id>.jsonl``): each line's result is
appended as it finishes and its (offset, length) recorded in the catalog; at finalizing the output
and error files are assembled from it in input order, then it is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

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


class ResultsLog:
    """One append-only file per batch under ``root``. Only the batch's lease holder appends."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, batch_id: str) -> Path:
        return self.root / f"{batch_id}.jsonl"

    def append(self, batch_id: str, data: bytes) -> tuple[int, int]:
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

    def append_many(self, batch_id: str, lines: list[bytes]) -> list[tuple[int, int]]:
        """Several results in one write; where each went."""
        offset, _ = self.append(batch_id, b"".join(lines))
        spans = []
        for line in lines:
            spans.append((offset, len(line)))
            offset += len(line)
        return spans

    def reader(self, batch_id: str) -> ResultsReader:
        return ResultsReader(self._path(batch_id))

    def remove(self, batch_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(batch_id).unlink()


class ResultsReader:
    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDONLY) if path.exists() else None

    def read(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            raise FileNotFoundError("the batch's results log is missing")
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise OSError(f"the results log ends before {offset + length}")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
