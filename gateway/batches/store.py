"""Where file contents live: a directory (:class:`DirectoryStore`, the default; a shared volume for
gateways on several machines), or an S3-compatible bucket (:class:`gateway.batches.s3.S3Store`:
streamed multipart writes, ranged reads, chunked downloads, deletes).

Metadata (names, owners, purposes) is not here: it lives in the catalog
(:mod:`gateway.batches.catalogs`). A key is written whole or not at all: a writer's bytes become
visible only on :meth:`commit`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 18


class BlobWriter(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> int:
        """Make the bytes written visible under the key (replacing what was there); their count."""
        ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    """Whole objects by key. A missing key raises :class:`FileNotFoundError`."""

    def writer(self, key: str) -> BlobWriter: ...

    def chunks(self, key: str) -> AsyncIterator[bytes]: ...

    async def read(self, key: str, offset: int, length: int) -> bytes: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class _FileWriter:
    """Bytes to a temporary file, renamed over the key's path on commit (atomic on one filesystem)."""

    def __init__(self, final: Path, temporary: Path) -> None:
        self._final = final
        self._temporary = temporary
        temporary.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(temporary, "wb")  # noqa: SIM115 (closed by commit or abort)
        self._size = 0

    async def write(self, data: bytes) -> None:
        self._file.write(data)  # into the page cache: microseconds, no need for a thread
        self._size += len(data)

    async def commit(self) -> int:
        self._file.close()
        os.replace(self._temporary, self._final)
        return self._size

    async def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()


class DirectoryStore:
    """One file per key under ``root`` (writes staged in ``root/.partial``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key

    def writer(self, key: str) -> BlobWriter:
        final = self._path(key)
        return _FileWriter(final, self.root / ".partial" / f"{key}.{secrets.token_hex(4)}")

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        fd = os.open(self._path(key), os.O_RDONLY)  # local reads come from the page cache: no thread
        try:
            while chunk := os.read(fd, CHUNK):
                yield chunk
        finally:
            os.close(fd)

    async def read(self, key: str, offset: int, length: int) -> bytes:
        fd = os.open(self._path(key), os.O_RDONLY)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    async def close(self) -> None:
        pass
