"""What the Files and Batches routes share with the batch runner (``app[BATCHES]``), and where it
is kept, by the config:

- by default, everything in ``data_dir``: the SQLite catalog, file contents under ``files/``,
  results logs under ``batches/`` (the processes of one machine share them);
- ``batches_redis_url`` (else ``limits_redis_url``): the catalog, the leases and the results logs
  in that Redis, shared by gateways on several machines;
- ``files_s3_bucket``: file contents in that S3-compatible bucket instead of ``data_dir/files``
  (several machines: this, or ``data_dir`` on a volume they all mount).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.batches.catalogs import BatchCatalog, LocalCatalog
from gateway.batches.results import Results, ResultsLog
from gateway.batches.store import BlobStore, DirectoryStore
from gateway.config import GatewayConfig


def _nothing() -> None:
    pass


@dataclass(slots=True)
class Batches:
    catalog: BatchCatalog
    blobs: BlobStore
    results: Results
    max_file_bytes: int
    wake: Callable[[], None] = field(default=_nothing)  # a batch was created or cancelled: look now

    @classmethod
    def under(cls, data_dir: Path, max_file_bytes: int) -> Batches:
        """The catalog, file contents and results logs under ``data_dir`` (created on first use)."""
        return cls(
            LocalCatalog(data_dir / "batches.sqlite3"),
            DirectoryStore(data_dir / "files"),
            ResultsLog(data_dir / "batches"),
            max_file_bytes,
        )

    @classmethod
    def configured(cls, config: GatewayConfig) -> Batches:
        """As the config says (nothing connects before its first use)."""
        made = cls.under(config.data_dir, config.max_file_bytes)
        redis_url = config.batches_redis_url or config.limits_redis_url
        if redis_url:
            from gateway.batches.catalog_redis import RedisCatalog
            from gateway.batches.results_redis import RedisResults

            made.catalog, made.results = RedisCatalog(redis_url), RedisResults(redis_url)
        if config.files_s3_bucket:
            from gateway.batches.s3 import S3Store  # boto3 is imported only when a bucket is configured

            made.blobs = S3Store(
                config.files_s3_bucket, config.files_s3_prefix, config.files_s3_url, config.files_s3_region
            )
        return made

    async def close(self) -> None:
        await self.catalog.close()
        await self.results.close()
        await self.blobs.close()
