"""The S3 file store against a real S3-compatible HTTP server (moto's, its own process): multipart
writes across parts, nothing visible before the commit, nothing left after an abort, ranged reads,
chunked downloads, deletes."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest

from gateway.batches.s3 import MIN_PART, S3Store
from gateway.batches.store import CHUNK


@pytest.fixture
async def store(s3_url: str, s3_bucket: str) -> AsyncIterator[S3Store]:
    made = S3Store(s3_bucket, prefix="files/", endpoint_url=s3_url, part_bytes=MIN_PART)
    yield made
    await made.close()


def data(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))  # no two parts alike


async def uploads(store: S3Store) -> dict[str, list[int]]:
    """The multipart uploads in progress in the bucket: the sizes of the parts each has sent."""
    client = await store.client()
    listed = await store.call(lambda: client.list_multipart_uploads(Bucket=store.bucket))
    found = {}
    for upload in listed.get("Uploads", []):
        key, upload_id = upload["Key"], upload["UploadId"]
        parts = await store.call(functools.partial(client.list_parts, Bucket=store.bucket, Key=key, UploadId=upload_id))
        found[key] = [part["Size"] for part in parts.get("Parts", [])]
    return found


async def keys(store: S3Store) -> list[str]:
    client = await store.client()
    listed = await store.call(lambda: client.list_objects_v2(Bucket=store.bucket))
    return [item["Key"] for item in listed.get("Contents", [])]


async def test_a_multipart_upload_across_parts(store: S3Store) -> None:
    content = data(2 * MIN_PART + 12345)  # two full parts and a short last one
    writer = store.writer("file-big")
    for start in range(0, len(content), 1 << 20):
        await writer.write(content[start : start + (1 << 20)])
    assert await uploads(store) == {"files/file-big": [MIN_PART, MIN_PART]}  # two parts sent already...
    with pytest.raises(FileNotFoundError):  # ...and nothing visible before the commit
        await store.read("file-big", 0, 1)
    assert await writer.commit() == len(content)
    assert await uploads(store) == {} and await keys(store) == ["files/file-big"]
    across = MIN_PART - 10  # a range across the first two parts
    assert await store.read("file-big", across, 100) == content[across : across + 100]
    assert await store.read("file-big", len(content) - 5, 100) == content[-5:]  # short at the end, as pread
    assert await store.read("file-big", len(content) + 10, 100) == b""
    assert await store.read("file-big", 0, 0) == b""
    chunks = [chunk async for chunk in store.chunks("file-big")]
    assert b"".join(chunks) == content and max(len(c) for c in chunks) <= CHUNK


async def test_a_small_file_is_one_put(store: S3Store) -> None:
    writer = store.writer("file-small")
    await writer.write(b"hello ")
    await writer.write(b"world")
    assert await uploads(store) == {}
    with pytest.raises(FileNotFoundError):
        await store.read("file-small", 0, 1)
    assert await writer.commit() == 11
    assert await store.read("file-small", 6, 5) == b"world"
    assert b"".join([c async for c in store.chunks("file-small")]) == b"hello world"
    empty = store.writer("file-empty")
    assert await empty.commit() == 0
    assert [c async for c in store.chunks("file-empty")] == []


async def test_a_commit_replaces_what_was_there(store: S3Store) -> None:
    for content in (b"first", b"second"):
        writer = store.writer("file-x")
        await writer.write(content)
        await writer.commit()
    assert await store.read("file-x", 0, 100) == b"second"


async def test_abort_leaves_nothing(store: S3Store) -> None:
    writer = store.writer("file-aborted")
    await writer.write(data(MIN_PART + 1))  # one part sent
    assert await uploads(store) == {"files/file-aborted": [MIN_PART + 1]}
    await writer.abort()
    assert await uploads(store) == {} and await keys(store) == []
    small = store.writer("file-small")
    await small.write(b"x")  # nothing sent yet
    await small.abort()
    assert await uploads(store) == {} and await keys(store) == []


async def test_delete(store: S3Store) -> None:
    writer = store.writer("file-gone")
    await writer.write(b"bytes")
    await writer.commit()
    await store.delete("file-gone")
    await store.delete("file-gone")  # twice: nothing to do
    assert await keys(store) == []
    with pytest.raises(FileNotFoundError):
        await store.read("file-gone", 0, 1)
    with pytest.raises(FileNotFoundError):
        [c async for c in store.chunks("file-gone")]


async def test_keys_and_failures(s3_url: str, s3_bucket: str) -> None:
    with pytest.raises(ValueError):
        S3Store(s3_bucket, endpoint_url=s3_url, part_bytes=MIN_PART - 1)
    missing = S3Store("no-such-bucket", endpoint_url=s3_url)
    try:
        with pytest.raises(ValueError):
            missing.writer("../escape")
        writer = missing.writer("file-a")
        await writer.write(b"x")
        with pytest.raises(OSError, match="NoSuchBucket") as raised:  # an I/O failure, not a missing file
            await writer.commit()
        assert not isinstance(raised.value, FileNotFoundError)
    finally:
        await missing.close()
