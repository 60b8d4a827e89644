"""The catalog in Redis, shared by gateway replicas on several machines (``batches_redis_url``, else
``limits_redis_url``), with the same semantics as the SQLite one (:mod:`gateway.batches.catalog`).

Keys, under ``prefix`` (``gateway:batches:``):

- ``seq``: one counter that orders uploads and batches (the ``after`` cursors of the list routes);
- ``file:<id>``, ``batch:<id>``: a hash per file and per batch, their fields named as the SQLite
  columns (a NULL is an absent field);
- ``files:<project>``, ``files-by-purpose:<purpose>:<project>``, ``batches:<project>``: sorted sets
  of ids scored by ``seq``, for the pages; ``active``: the batches with work left, oldest first;
- ``lines:<batch>``: a running batch's lines (a list: ``[offset, length, custom_id]`` at each
  index), and ``done:<batch>``: a hash from a finished line's index to ``[ok, result spot]``.

Every change is one Lua script (atomic, one round trip), except the recording of a batch's lines,
which is large and goes as a ``WATCH``/``MULTI`` transaction on the batch's hash. A line is
recorded at most once (``HSETNX``), only while the batch's lines exist and, with ``owner``, while
the batch's lease key (:class:`gateway.batches.lease.RedisLease`) still names that owner. The
keys are not hash-tagged: one Redis server (or a primary with replicas), not a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.batches.lease import LEASE_PREFIX, Lease, RedisLease
from gateway.batches.records import (
    ACTIVE,
    CANCELLABLE,
    STATUS_TIMES,
    BatchRecord,
    FileRecord,
    LineSpan,
    LineState,
    NewLine,
)

_ROWS = 1000  # lines sent per command when a batch's lines are recorded

# KEYS: the counter, the file's hash, the project's files, the project's files of the purpose.
# ARGV: the id, then the hash's fields and values. The new seq is returned.
_ADD = """
local seq = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], 'seq', seq, unpack(ARGV, 2))
redis.call('ZADD', KEYS[3], seq, ARGV[1])
if KEYS[4] then redis.call('ZADD', KEYS[4], seq, ARGV[1]) end
return seq
"""
# KEYS: the file's hash and its two sorted sets. ARGV: the id and the project.
_DELETE_FILE = """
if redis.call('HGET', KEYS[1], 'project') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
# shared by the scripts below: is the batch's status (KEYS[1]) one of ARGV[at + 1 .. at + ARGV[at]]?
_STATUS_IN = """
local function status_in(at)
    local status = redis.call('HGET', KEYS[1], 'status')
    for i = at + 1, at + tonumber(ARGV[at]) do
        if ARGV[i] == status then return true end
    end
    return false
end
"""
# KEYS: the batch's hash, the active set. ARGV: the id, the project ('' for any), the new status,
# '1' when it is active, the statuses it may leave (their count first), fields to set (their count
# first, then names and values), then fields to clear. 1 when moved.
_MOVE = (
    _STATUS_IN
    + """
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'project') ~= ARGV[2] then return 0 end
if not status_in(5) then return 0 end
local at = 6 + tonumber(ARGV[5])
local sets = tonumber(ARGV[at])
redis.call('HSET', KEYS[1], 'status', ARGV[3], unpack(ARGV, at + 1, at + 2 * sets))
for i = at + 2 * sets + 1, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
if ARGV[4] ~= '1' then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1
"""
)
# KEYS: the batch's hash, its lines, its done lines, its lease key. ARGV: the index, the line's
# record, '1' when it succeeded, input and output tokens, the owner ('' for none). 1 when recorded.
_RECORD = """
if ARGV[6] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[6] then return 0 end
if redis.call('LLEN', KEYS[2]) <= tonumber(ARGV[1]) then return 0 end
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[3] == '1' and 'completed' or 'failed', 1)
redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[5])
return 1
"""
# KEYS: the batch's hash, the active set, its lines, its done lines, the counter, then three per
# output file (as _ADD's). ARGV: the id, the status, its time's field, the time, the output and
# error file ids ('' for none), the statuses it may leave (their count first), then six per file.
_FINISH = (
    _STATUS_IN
    + """
if not status_in(7) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[3], ARGV[4])
for i, field in ipairs({'output_file_id', 'error_file_id'}) do
    if ARGV[4 + i] ~= '' then redis.call('HSET', KEYS[1], field, ARGV[4 + i])
    else redis.call('HDEL', KEYS[1], field) end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
local at = 8 + tonumber(ARGV[7])
for f = 0, (#KEYS - 5) / 3 - 1 do
    local k, a = 6 + 3 * f, at + 6 * f
    local seq = redis.call('INCR', KEYS[5])
    redis.call('HSET', KEYS[k], 'seq', seq, 'id', ARGV[a], 'project', ARGV[a + 1], 'filename', ARGV[a + 2],
        'purpose', ARGV[a + 3], 'bytes', ARGV[a + 4], 'created_at', ARGV[a + 5])
    redis.call('ZADD', KEYS[k + 1], seq, ARGV[a])
    redis.call('ZADD', KEYS[k + 2], seq, ARGV[a])
end
return 1
"""
)


def _file(fields: dict[str, str]) -> FileRecord:
    return FileRecord(
        fields["id"],
        fields["project"],
        fields["filename"],
        fields["purpose"],
        int(fields["bytes"]),
        int(fields["created_at"]),
    )


def _flat(fields: dict[str, str | int]) -> list[str | int]:
    """A hash's fields as HSET takes them: name, value, name, value…"""
    return [item for pair in fields.items() for item in pair]


def _file_fields(record: FileRecord) -> dict[str, str | int]:
    return {
        "id": record.id,
        "project": record.project,
        "filename": record.filename,
        "purpose": record.purpose,
        "bytes": record.bytes,
        "created_at": record.created_at,
    }


def _batch(fields: dict[str, str]) -> BatchRecord:
    def count(name: str) -> int:
        return int(fields.get(name, 0))

    return BatchRecord(
        id=fields["id"],
        project=fields["project"],
        key_id=fields["key_id"],
        endpoint=fields["endpoint"],
        input_file_id=fields["input_file_id"],
        completion_window=fields["completion_window"],
        status=fields["status"],
        created_at=int(fields["created_at"]),
        expires_at=int(fields["expires_at"]),
        metadata=orjson.loads(fields["metadata"]) if "metadata" in fields else None,
        model=fields.get("model"),
        errors=orjson.loads(fields["errors"]) if "errors" in fields else None,
        output_file_id=fields.get("output_file_id"),
        error_file_id=fields.get("error_file_id"),
        times={status: int(fields[name]) for status, name in STATUS_TIMES.items() if name in fields},
        total=count("total"),
        completed=count("completed"),
        failed=count("failed"),
        input_tokens=count("input_tokens"),
        output_tokens=count("output_tokens"),
    )


class RedisCatalog:
    def __init__(self, url: str, prefix: str = "gateway:batches:", lease_prefix: str = LEASE_PREFIX) -> None:
        import redis.asyncio

        self.url = url
        self.prefix = prefix
        self.lease_prefix = lease_prefix
        self._redis: Any = redis.asyncio.from_url(url, decode_responses=True)
        self._add = self._redis.register_script(_ADD)
        self._delete_file = self._redis.register_script(_DELETE_FILE)
        self._move = self._redis.register_script(_MOVE)
        self._record = self._redis.register_script(_RECORD)
        self._finish = self._redis.register_script(_FINISH)

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _file_keys(self, record: FileRecord) -> list[str]:
        return [
            self._k("file", record.id),
            self._k("files", record.project),
            self._k("files-by-purpose", record.purpose, record.project),
        ]

    async def exists(self) -> bool:
        return True  # nothing to create: an empty Redis answers that there is no work

    async def close(self) -> None:
        await self._redis.aclose()

    def lease(self, owner: str, ttl: float = 30.0) -> Lease:
        return RedisLease(self.url, owner, ttl, prefix=self.lease_prefix, fenced=True)

    # files

    async def add_file(self, record: FileRecord) -> None:
        keys = self._file_keys(record)
        await self._add(keys=[self._k("seq"), *keys], args=[record.id, *_flat(_file_fields(record))])

    async def file(self, file_id: str, project: str) -> FileRecord | None:
        fields = await self._redis.hgetall(self._k("file", file_id))
        return _file(fields) if fields and fields["project"] == project else None

    async def _seq(self, kind: str, object_id: str, project: str) -> int | None:
        owner, seq = await self._redis.hmget(self._k(kind, object_id), ["project", "seq"])
        return int(seq) if owner == project and seq is not None else None

    async def file_seq(self, file_id: str, project: str) -> int | None:
        return await self._seq("file", file_id, project)

    async def _page(self, key: str, after_seq: int | None, limit: int, newest_first: bool) -> list[str]:
        if newest_first:
            top = "+inf" if after_seq is None else f"({after_seq}"
            ids: list[str] = await self._redis.zrevrangebyscore(key, top, "-inf", start=0, num=limit)
        else:
            bottom = "-inf" if after_seq is None else f"({after_seq}"
            ids = await self._redis.zrangebyscore(key, bottom, "+inf", start=0, num=limit)
        return ids

    async def _hashes(self, kind: str, ids: Sequence[str]) -> list[dict[str, str]]:
        """The objects' hashes, in order, without those deleted meanwhile."""
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for object_id in ids:
                pipe.hgetall(self._k(kind, object_id))
            found: list[dict[str, str]] = await pipe.execute()
        return [fields for fields in found if fields]

    async def files(
        self, project: str, purpose: str | None, after_seq: int | None, limit: int, newest_first: bool
    ) -> list[FileRecord]:
        key = self._k("files", project) if purpose is None else self._k("files-by-purpose", purpose, project)
        ids = await self._page(key, after_seq, limit, newest_first)
        return [_file(fields) for fields in await self._hashes("file", ids)]

    async def delete_file(self, file_id: str, project: str) -> bool:
        record = await self.file(file_id, project)
        if record is None:
            return False
        return bool(await self._delete_file(keys=self._file_keys(record), args=[file_id, project]))

    # batches

    async def add_batch(self, batch: BatchRecord) -> None:
        fields: dict[str, str | int] = {
            "id": batch.id,
            "project": batch.project,
            "key_id": batch.key_id,
            "endpoint": batch.endpoint,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": batch.status,
            "created_at": batch.created_at,
            "expires_at": batch.expires_at,
        }
        if batch.metadata is not None:
            fields["metadata"] = orjson.dumps(batch.metadata).decode()
        keys = [self._k("seq"), self._k("batch", batch.id), self._k("batches", batch.project)]
        if batch.status in ACTIVE:
            keys.append(self._k("active"))
        await self._add(keys=keys, args=[batch.id, *_flat(fields)])

    async def batch(self, batch_id: str, project: str | None = None) -> BatchRecord | None:
        fields = await self._redis.hgetall(self._k("batch", batch_id))
        if not fields or (project is not None and fields["project"] != project):
            return None
        return _batch(fields)

    async def batch_seq(self, batch_id: str, project: str) -> int | None:
        return await self._seq("batch", batch_id, project)

    async def batches(self, project: str, after_seq: int | None, limit: int) -> list[BatchRecord]:
        ids = await self._page(self._k("batches", project), after_seq, limit, newest_first=True)
        return [_batch(fields) for fields in await self._hashes("batch", ids)]

    async def _moved(
        self, batch_id: str, project: str, before: Sequence[str], after: str, values: dict[str, Any]
    ) -> bool:
        sets = [item for name, value in values.items() if value is not None for item in (name, value)]
        clears = [name for name, value in values.items() if value is None]
        args = [batch_id, project, after, "1" if after in ACTIVE else "0", len(before), *before, len(sets) // 2]
        moved = await self._move(keys=[self._k("batch", batch_id), self._k("active")], args=[*args, *sets, *clears])
        return bool(moved)

    async def transition(self, batch_id: str, before: Sequence[str], after: str, now: int, **values: Any) -> bool:
        if after in STATUS_TIMES:
            values[STATUS_TIMES[after]] = now
        return await self._moved(batch_id, "", before, after, values)

    async def cancel(self, batch_id: str, project: str, now: int) -> bool:
        return await self._moved(batch_id, project, CANCELLABLE, "cancelling", {STATUS_TIMES["cancelling"]: now})

    async def status(self, batch_id: str) -> str | None:
        status: str | None = await self._redis.hget(self._k("batch", batch_id), "status")
        return status

    async def candidates(self, now: float) -> list[str]:
        """Batches with work left whose lease is free (or lapsed: its key expired), oldest first."""
        ids: list[str] = await self._redis.zrange(self._k("active"), 0, -1)
        if not ids:
            return []
        holders = await self._redis.mget([self.lease_prefix + batch_id for batch_id in ids])
        return [batch_id for batch_id, holder in zip(ids, holders, strict=True) if holder is None]

    # lines

    async def start_lines(self, batch_id: str, lines: Sequence[NewLine], model: str | None, now: int) -> bool:
        from redis.exceptions import WatchError

        key = self._k("batch", batch_id)
        failed = sum(1 for line in lines if line.result is not None)
        spans = [orjson.dumps([line.span.offset, line.span.length, line.span.custom_id]) for line in lines]
        done = {str(line.span.idx): _done_record(False, line.result) for line in lines if line.result is not None}
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    if await pipe.hget(key, "status") != "validating":
                        return False
                    pipe.multi()
                    started: dict[str, str | int] = {
                        "status": "in_progress",
                        STATUS_TIMES["in_progress"]: now,
                        "total": len(lines),
                        "failed": failed,
                    }
                    if model is not None:
                        started["model"] = model
                    pipe.hset(key, mapping=started)
                    lines_key, done_key = self._k("lines", batch_id), self._k("done", batch_id)
                    pipe.delete(lines_key, done_key)
                    for start in range(0, len(spans), _ROWS):
                        pipe.rpush(lines_key, *spans[start : start + _ROWS])
                    items = list(done.items())
                    for start in range(0, len(items), _ROWS):
                        pipe.hset(done_key, mapping=dict(items[start : start + _ROWS]))
                    await pipe.execute()
                    return True
                except WatchError:  # the batch changed meanwhile (cancelled?): look again
                    continue

    async def pending_lines(self, batch_id: str) -> list[LineSpan]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self._k("lines", batch_id), 0, -1)
            pipe.hkeys(self._k("done", batch_id))
            spans, done = await pipe.execute()
        finished = {int(idx) for idx in done}
        pending = []
        for idx, raw in enumerate(spans):
            if idx not in finished:
                offset, length, custom_id = orjson.loads(raw)
                pending.append(LineSpan(idx, offset, length, custom_id))
        return pending

    async def record_line(
        self,
        batch_id: str,
        idx: int,
        ok: bool,
        result: tuple[int, int],
        tokens: tuple[int, int] = (0, 0),
        owner: str | None = None,
    ) -> bool:
        keys = [self._k("batch", batch_id), self._k("lines", batch_id), self._k("done", batch_id)]
        keys.append(self.lease_prefix + batch_id)
        args: list[str | int] = [idx, _done_record(ok, result), "1" if ok else "0", *tokens, owner or ""]
        return bool(await self._record(keys=keys, args=args))

    async def lines(self, batch_id: str, after_idx: int, limit: int) -> list[LineState]:
        first = after_idx + 1
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self._k("lines", batch_id), first, first + limit - 1)
            pipe.hmget(self._k("done", batch_id), [str(idx) for idx in range(first, first + limit)])
            spans, done = await pipe.execute()
        states = []
        for idx, raw, record in zip(range(first, first + len(spans)), spans, done, strict=False):
            custom_id = orjson.loads(raw)[2]
            if record is None:
                states.append(LineState(idx, custom_id, False, False, None, None))
            else:
                ok, offset, length = orjson.loads(record)
                states.append(LineState(idx, custom_id, True, bool(ok), offset, length))
        return states

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
        keys = [self._k("batch", batch_id), self._k("active"), self._k("lines", batch_id), self._k("done", batch_id)]
        keys.append(self._k("seq"))
        ids = [output_file_id or "", error_file_id or ""]
        args: list[str | int] = [batch_id, status, STATUS_TIMES[status], now, *ids, len(before), *before]
        for record in files:
            keys += self._file_keys(record)
            args += _file_fields(record).values()
        return bool(await self._finish(keys=keys, args=args))


def _done_record(ok: bool, result: tuple[int, int] | None) -> str:
    """A finished line's value in ``done:<batch>``: whether it succeeded, where its result is."""
    offset, length = result if result is not None else (None, None)
    return orjson.dumps([int(ok), offset, length]).decode()
