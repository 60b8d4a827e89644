"""What the catalog holds: files, batches and a batch's lines, as the rest of the gateway sees them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
CANCELLABLE = ("validating", "in_progress")
# the column of the time each status was entered
STATUS_TIMES = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    created_at: int


@dataclass(slots=True)
class BatchRecord:
    id: str
    project: str
    key_id: str  # the key that created it: its lines run as that key (its models)
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int] = field(default_factory=dict)  # STATUS_TIMES' columns that are set
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class LineSpan:
    """A line of the input file: where it is, and its custom_id (None when the line has none)."""

    idx: int
    offset: int
    length: int
    custom_id: str | None


@dataclass(frozen=True, slots=True)
class LineState:
    idx: int
    custom_id: str | None
    done: bool
    ok: bool
    result_offset: int | None
    result_length: int | None


@dataclass(frozen=True, slots=True)
class NewLine:
    """A line as validation leaves it: pending, or already done (an invalid line, its error written)."""

    span: LineSpan
    result: tuple[int, int] | None = None  # an invalid line's error: (offset, length) in the results log
