"""Finalizing a batch: its output and error files written from the results log in input order.

The files' ids follow from the batch's id, so a process that dies while finalizing leaves nothing
behind: the next holder of the lease writes the same keys again. Lines that never ran are left
out (a cancelled batch), or reported as ``batch_expired`` in the error file (an expired batch).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

from gateway.batches.catalogs import BatchCatalog
from gateway.batches.lines import LineError
from gateway.batches.records import BatchRecord, FileRecord
from gateway.batches.results import Results, error_line
from gateway.batches.store import BlobStore, BlobWriter

log = logging.getLogger(__name__)

OUTPUT_PURPOSE = "batch_output"
_ROWS = 1000  # lines read from the catalog per turn of the event loop
EXPIRED = LineError("batch_expired", "This request could not be executed before the completion window expired.")
LOST = LineError("result_lost", "The result of this request was lost; submit it again.")


def output_file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Assembled:
    files: list[FileRecord]
    output_file_id: str | None
    error_file_id: str | None


class _Part:
    """One of the two files, opened on its first line (a batch without errors has no error file)."""

    def __init__(self, blobs: BlobStore, batch_id: str, kind: str) -> None:
        self._blobs = blobs
        self._batch_id = batch_id
        self.kind = kind
        self.id = output_file_id(batch_id, kind)
        self._writer: BlobWriter | None = None

    async def write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._writer is None:
            self._writer = self._blobs.writer(self.id)
        await self._writer.write(b"".join(lines))

    async def commit(self, project: str, now: int) -> FileRecord | None:
        if self._writer is None:
            return None
        size = await self._writer.commit()
        return FileRecord(self.id, project, f"batch_{self._batch_id}_{self.kind}.jsonl", OUTPUT_PURPOSE, size, now)

    async def abort(self) -> None:
        if self._writer is not None:
            await self._writer.abort()


async def assemble(
    catalog: BatchCatalog, blobs: BlobStore, results: Results, batch: BatchRecord, expired: bool, now: int
) -> Assembled:
    output, errors = _Part(blobs, batch.id, "output"), _Part(blobs, batch.id, "error")
    try:
        after = -1
        while rows := await catalog.lines(batch.id, after, _ROWS):
            good: list[bytes] = []
            bad: list[bytes] = []
            spots = {
                line.idx: (line.result_offset, line.result_length)
                for line in rows
                if line.done and line.result_offset is not None and line.result_length is not None
            }
            found = dict(zip(spots, await results.read(batch.id, list(spots.values())), strict=True))
            for line in rows:
                if line.idx in found:
                    data = found[line.idx]
                    if data is None:
                        log.error("batch %s line %d: its result is unreadable", batch.id, line.idx)
                        bad.append(error_line(line.custom_id, None, LOST))
                    else:
                        (good if line.ok else bad).append(data)
                elif expired:
                    bad.append(error_line(line.custom_id, None, EXPIRED))
            await output.write(good)
            await errors.write(bad)
            after = rows[-1].idx
            await asyncio.sleep(0)
        files = [f for f in (await output.commit(batch.project, now), await errors.commit(batch.project, now)) if f]
    except BaseException:
        await output.abort()
        await errors.abort()
        raise
    ids = {f.id for f in files}
    return Assembled(files, output.id if output.id in ids else None, errors.id if errors.id in ids else None)
