"""The catalog as the routes and the batch runner see it: one async interface, two implementations.

- :class:`LocalCatalog`: the SQLite file in ``data_dir`` (:class:`gateway.batches.catalog.Catalog`),
  for the processes of one machine; its calls are short local transactions, run on the event loop.
- :class:`gateway.batches.catalog_redis.RedisCatalog`: one Redis shared by gateways on several
  machines (``batches_redis_url``, else ``limits_redis_url``).

Each makes the lease that goes with it (:meth:`BatchCatalog.lease`): the batch's row in SQLite, a
Redis key beside the Redis catalog. Either way a line's result is recorded at most once, and only
while its recorder still holds the batch's lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.batches.catalog import Catalog
from gateway.batches.lease import Lease, SqliteLease
from gateway.batches.records import BatchRecord, FileRecord, LineSpan, LineState, NewLine


class BatchCatalog(Protocol):
    """Files, batches and each running batch's per-line progress (see :class:`Catalog` for each call)."""

    async def exists(self) -> bool:
        """False while nothing was ever stored (the runner then has nothing to look for)."""
        ...

    async def add_file(self, record: FileRecord) -> None: ...

    async def file(self, file_id: str, project: str) -> FileRecord | None: ...

    async def file_seq(self, file_id: str, project: str) -> int | None: ...

    async def files(
        self, project: str, purpose: str | None, after_seq: int | None, limit: int, newest_first: bool
    ) -> list[FileRecord]: ...

    async def delete_file(self, file_id: str, project: str) -> bool: ...

    async def add_batch(self, batch: BatchRecord) -> None: ...

    async def batch(self, batch_id: str, project: str | None = None) -> BatchRecord | None: ...

    async def batch_seq(self, batch_id: str, project: str) -> int | None: ...

    async def batches(self, project: str, after_seq: int | None, limit: int) -> list[BatchRecord]: ...

    async def transition(self, batch_id: str, before: Sequence[str], after: str, now: int, **values: Any) -> bool: ...

    async def cancel(self, batch_id: str, project: str, now: int) -> bool: ...

    async def status(self, batch_id: str) -> str | None: ...

    async def candidates(self, now: float) -> list[str]: ...

    async def start_lines(self, batch_id: str, lines: Sequence[NewLine], model: str | None, now: int) -> bool: ...

    async def pending_lines(self, batch_id: str) -> list[LineSpan]: ...

    async def record_line(
        self,
        batch_id: str,
        idx: int,
        ok: bool,
        result: tuple[int, int],
        tokens: tuple[int, int] = (0, 0),
        owner: str | None = None,
    ) -> bool: ...

    async def lines(self, batch_id: str, after_idx: int, limit: int) -> list[LineState]: ...

    async def finish(
        self,
        batch_id: str,
        before: Sequence[str],
        status: str,
        now: int,
        files: Sequence[FileRecord],
        output_file_id: str | None,
        error_file_id: str | None,
    ) -> bool: ...

    def lease(self, owner: str, ttl: float = 30.0) -> Lease:
        """The lease on this catalog's batches, held as ``owner``."""
        ...

    async def close(self) -> None: ...


class LocalCatalog:
    """:class:`Catalog` behind the async interface (its calls take tens of microseconds: no thread)."""

    def __init__(self, path: Path) -> None:
        self.local = Catalog(path)

    async def exists(self) -> bool:
        return self.local.exists()

    async def add_file(self, record: FileRecord) -> None:
        self.local.add_file(record)

    async def file(self, file_id: str, project: str) -> FileRecord | None:
        return self.local.file(file_id, project)

    async def file_seq(self, file_id: str, project: str) -> int | None:
        return self.local.file_seq(file_id, project)

    async def files(
        self, project: str, purpose: str | None, after_seq: int | None, limit: int, newest_first: bool
    ) -> list[FileRecord]:
        return self.local.files(project, purpose, after_seq, limit, newest_first)

    async def delete_file(self, file_id: str, project: str) -> bool:
        return self.local.delete_file(file_id, project)

    async def add_batch(self, batch: BatchRecord) -> None:
        self.local.add_batch(batch)

    async def batch(self, batch_id: str, project: str | None = None) -> BatchRecord | None:
        return self.local.batch(batch_id, project)

    async def batch_seq(self, batch_id: str, project: str) -> int | None:
        return self.local.batch_seq(batch_id, project)

    async def batches(self, project: str, after_seq: int | None, limit: int) -> list[BatchRecord]:
        return self.local.batches(project, after_seq, limit)

    async def transition(self, batch_id: str, before: Sequence[str], after: str, now: int, **values: Any) -> bool:
        return self.local.transition(batch_id, before, after, now, **values)

    async def cancel(self, batch_id: str, project: str, now: int) -> bool:
        return self.local.cancel(batch_id, project, now)

    async def status(self, batch_id: str) -> str | None:
        return self.local.status(batch_id)

    async def candidates(self, now: float) -> list[str]:
        return self.local.candidates(now)

    async def start_lines(self, batch_id: str, lines: Sequence[NewLine], model: str | None, now: int) -> bool:
        return self.local.start_lines(batch_id, lines, model, now)

    async def pending_lines(self, batch_id: str) -> list[LineSpan]:
        return self.local.pending_lines(batch_id)

    async def record_line(
        self,
        batch_id: str,
        idx: int,
        ok: bool,
        result: tuple[int, int],
        tokens: tuple[int, int] = (0, 0),
        owner: str | None = None,
    ) -> bool:
        return self.local.record_line(batch_id, idx, ok, result, tokens, owner)

    async def lines(self, batch_id: str, after_idx: int, limit: int) -> list[LineState]:
        return self.local.lines(batch_id, after_idx, limit)

    async def finish(
        self,
        batch_id: str,
        before: Sequence[str],
        status: str,
        now: int,
        files: Sequence[FileRecord],
        output_file_id: str | None,
        error_file_id: str | None,
    ) -> bool:
        return self.local.finish(batch_id, before, status, now, files, output_file_id, error_file_id)

    def lease(self, owner: str, ttl: float = 30.0) -> Lease:
        return SqliteLease(self.local, owner, ttl)

    async def close(self) -> None:
        self.local.close()
