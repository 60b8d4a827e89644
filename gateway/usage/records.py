"""One request's usage, as the ledger stores it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

CLIENT_CLOSED = 499  # the client went away before its response ended (nginx's status), REST and gRPC alike

# the table's columns, in the order of :meth:`UsageRecord.row`
COLUMNS = (
    "time",
    "request_id",
    "project",
    "key_id",
    "model",
    "endpoint",
    "input_tokens",
    "output_tokens",
    "batch",
    "status",
)


@dataclass(slots=True, kw_only=True)
class UsageRecord:
    """What one request used. Build it with keywords; only ``project``, ``model`` and ``endpoint``
    have no default::

        UsageRecord(project="team-a", model="llama", endpoint="/v1/chat/completions",
                    input_tokens=12, output_tokens=30, batch=True, request_id="batch_1-line-7")

    Not frozen (a frozen dataclass costs twice as much to build on the request path): treat it as
    immutable once appended.
    """

    project: str  # the project the key belongs to ("default" with auth off)
    model: str  # the OpenAI model id ("" for requests that used none: /v1/models, /v1/usage)
    endpoint: str  # the REST route without the project prefix (/v1/chat/completions), or grpc:<Method>
    input_tokens: int = 0  # prompt tokens, as the response's usage reported them
    output_tokens: int = 0  # completion tokens, as the response's usage reported them
    status: int = 200  # the HTTP status (gRPC: the HTTP status of the same outcome); 499: the client went away
    batch: bool = False  # a line of a batch (billed at half price), not an interactive request
    key_id: str = ""  # the API key's public id ("" with auth off)
    request_id: str = ""  # x-request-id on REST; the response's id on gRPC; the batch line's id
    time: float = field(default_factory=time.time)  # unix seconds, when the request ended

    def row(self) -> tuple[float, str, str, str, str, str, int, int, int, int]:
        """The record as a table row (:data:`COLUMNS`)."""
        return (
            self.time,
            self.request_id,
            self.project,
            self.key_id,
            self.model,
            self.endpoint,
            self.input_tokens,
            self.output_tokens,
            int(self.batch),
            self.status,
        )
