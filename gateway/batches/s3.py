"""File contents in an S3-compatible bucket (AWS S3, MinIO, Ceph…) through boto3, for gateways on
several machines (``files_s3_bucket``).

boto3 blocks: each call runs in this store's own threads, so the event loop never waits on the
network and the store's calls do not queue behind other uses of the default executor. A writer
buffers ``part_bytes`` (5 MiB at least, S3's smallest part) and sends each full buffer as a part
of a multipart upload, so an upload is never held in memory whole; a file smaller than one part
is one ``PutObject``. Nothing is visible under the key before :meth:`commit` completes the upload;
:meth:`abort` drops its parts. Reads are ranged GETs; downloads stream the body in chunks.

Credentials come from boto3's usual sources: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
(and ``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` and the shared config files, or the instance's role.
A missing key raises :class:`FileNotFoundError`; any other failure :class:`OSError`, as a disk's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.batches.store import CHUNK, BlobWriter

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

T = TypeVar("T")
MIN_PART = 5 << 20  # S3's smallest part (but the last)
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _translated(operation: str, key: str) -> Iterator[None]:
    """boto3's errors as the store's: a missing key, or an I/O failure."""
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        if code in _MISSING:
            raise FileNotFoundError(f"no object {key!r} in the bucket") from None
        raise OSError(f"S3 {operation} of {key!r} failed: {code or exc}") from exc
    except BotoCoreError as exc:  # connection refused, timeouts, missing credentials
        raise OSError(f"S3 {operation} of {key!r} failed: {exc}") from exc


class S3Store:
    """One object per key, named ``prefix + key``, in ``bucket``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "gateway/",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        part_bytes: int = 8 << 20,
        threads: int = 16,
    ) -> None:
        if part_bytes < MIN_PART:
            raise ValueError(f"a part is at least {MIN_PART} bytes")
        self.bucket = bucket
        self.prefix = prefix
        self.part_bytes = part_bytes
        self._endpoint_url = endpoint_url
        self._region = region
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="s3-store")
        self._client: S3Client | None = None
        self._making = asyncio.Lock()

    def _make_client(self) -> S3Client:
        config = Config(
            max_pool_connections=self._threads,
            retries={"mode": "standard", "max_attempts": 5},
            s3={"addressing_style": "path"} if self._endpoint_url else {},  # MinIO & co. serve buckets by path
        )
        # a session of its own: boto3's default session is not safe to share between threads
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=self._endpoint_url, region_name=self._region, config=config)

    async def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` (a boto3 call) in one of the store's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def client(self) -> S3Client:
        """The boto3 client, made on first use (making one reads files and takes tens of ms: a thread)."""
        async with self._making:
            if self._client is None:
                self._client = await self.call(self._make_client)
            return self._client

    def name(self, key: str) -> str:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a storage key: {key!r}")
        return self.prefix + key

    def writer(self, key: str) -> BlobWriter:
        return _MultipartWriter(self, self.name(key))

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        name = self.name(key)
        client = await self.client()
        with _translated("GET", name):
            body = (await self.call(lambda: client.get_object(Bucket=self.bucket, Key=name)))["Body"]
        try:
            while True:
                with _translated("GET", name):
                    chunk = await self.call(lambda: body.read(CHUNK))
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def read(self, key: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer at the end of the object, as a file's pread)."""
        name = self.name(key)
        if length <= 0:
            return b""
        client = await self.client()
        span = f"bytes={offset}-{offset + length - 1}"
        with _translated("GET", name):
            try:
                response = await self.call(lambda: client.get_object(Bucket=self.bucket, Key=name, Range=span))
            except ClientError as exc:
                if _code(exc) == "InvalidRange":  # the offset is past the end
                    return b""
                raise
            return await self.call(response["Body"].read)

    async def delete(self, key: str) -> None:
        name = self.name(key)
        client = await self.client()
        with _translated("DELETE", name):
            await self.call(lambda: client.delete_object(Bucket=self.bucket, Key=name))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self.call(client.close)
        self._pool.shutdown(wait=False)


class _MultipartWriter:
    def __init__(self, store: S3Store, name: str) -> None:
        self._store = store
        self._name = name
        self._buffer = bytearray()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self._size += len(data)
        if len(self._buffer) >= self._store.part_bytes:
            await self._send_part()

    async def _send_part(self) -> None:
        store, client, bucket, name = self._store, await self._store.client(), self._store.bucket, self._name
        with _translated("multipart upload", name):
            if self._upload_id is None:
                created = await store.call(lambda: client.create_multipart_upload(Bucket=bucket, Key=name))
                self._upload_id = created["UploadId"]
            upload_id, number, data = self._upload_id, len(self._parts) + 1, bytes(self._buffer)
            sent = await store.call(
                lambda: client.upload_part(Bucket=bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data)
            )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
        self._buffer.clear()

    async def commit(self) -> int:
        store, client, bucket, name = self._store, await self._store.client(), self._store.bucket, self._name
        try:
            if self._upload_id is None:  # smaller than a part: one request
                data = bytes(self._buffer)
                with _translated("PUT", name):
                    await store.call(lambda: client.put_object(Bucket=bucket, Key=name, Body=data))
                self._buffer.clear()
                return self._size
            if self._buffer:
                await self._send_part()  # the last part may be smaller
            upload_id, parts = self._upload_id, self._parts
            with _translated("multipart upload", name):
                await store.call(
                    lambda: client.complete_multipart_upload(
                        Bucket=bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
                    )
                )
        except BaseException:
            await self.abort()
            raise
        self._upload_id = None
        return self._size

    async def abort(self) -> None:
        self._buffer.clear()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        store, client, bucket, name = self._store, await self._store.client(), self._store.bucket, self._name
        with _translated("multipart abort", name):
            await store.call(lambda: client.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload_id))
