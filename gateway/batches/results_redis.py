"""A batch's results log in Redis, beside the Redis catalog: every replica reads what another wrote.

One hash per batch: field ``n`` counts the results appended, and each result is stored under its
number. A result's spot is (its number, its length): the catalog records it with the line, as it
records an offset into the local log. A result appended by a holder that lost the lease before
recording it stays unreferenced, as a torn write in the local log does; the hash goes when the
batch is finalized. Redis holds a running batch's results until then (its output size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# KEYS[1] the batch's hash; ARGV the results: numbered on from the count, the first one's number returned
_APPEND = """
local last = redis.call('HINCRBY', KEYS[1], 'n', #ARGV)
local first = last - #ARGV + 1
for i = 1, #ARGV do
    redis.call('HSET', KEYS[1], tostring(first + i - 1), ARGV[i])
end
return first
"""
_BATCH = 1000  # results sent or read per command


class RedisResults:
    def __init__(self, url: str, prefix: str = "gateway:batches:") -> None:
        import redis.asyncio

        self._redis: Any = redis.asyncio.from_url(url)  # bytes in, bytes out
        self._prefix = prefix
        self._append = self._redis.register_script(_APPEND)

    def _key(self, batch_id: str) -> str:
        return f"{self._prefix}results:{batch_id}"

    async def append(self, batch_id: str, data: bytes) -> tuple[int, int]:
        return (await self.append_many(batch_id, [data]))[0]

    async def append_many(self, batch_id: str, lines: Sequence[bytes]) -> list[tuple[int, int]]:
        spots: list[tuple[int, int]] = []
        for start in range(0, len(lines), _BATCH):
            part = lines[start : start + _BATCH]
            first = int(await self._append(keys=[self._key(batch_id)], args=list(part)))
            spots.extend((first + i, len(data)) for i, data in enumerate(part))
        return spots

    async def read(self, batch_id: str, spots: Sequence[tuple[int, int]]) -> list[bytes | None]:
        found: list[bytes | None] = []
        for start in range(0, len(spots), _BATCH):
            part = spots[start : start + _BATCH]
            values = await self._redis.hmget(self._key(batch_id), [str(number) for number, _ in part])
            found.extend(
                value if value is not None and len(value) == length else None
                for value, (_, length) in zip(values, part, strict=True)
            )
        return found

    async def remove(self, batch_id: str) -> None:
        await self._redis.delete(self._key(batch_id))

    async def close(self) -> None:
        await self._redis.aclose()
