"""What the Files and Batches routes share with the batch runner (``app[BATCHES]``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.batches.catalog import Catalog
from gateway.batches.results import ResultsLog
from gateway.batches.store import BlobStore, DirectoryStore


def _nothing() -> None:
    pass


@dataclass(slots=True)
class Batches:
    catalog: Catalog
    blobs: BlobStore
    results: ResultsLog
    max_file_bytes: int
    wake: Callable[[], None] = field(default=_nothing)  # a batch was created or cancelled: look now

    @classmethod
    def under(cls, data_dir: Path, max_file_bytes: int) -> Batches:
        """The catalog, file contents and results logs under ``data_dir`` (created on first use)."""
        return cls(
            Catalog(data_dir / "batches.sqlite3"),
            DirectoryStore(data_dir / "files"),
            ResultsLog(data_dir / "batches"),
            max_file_bytes,
        )
