"""Who works on a batch: exactly one gateway process at a time holds its lease, renewing it while
it runs; a lease not renewed (its holder died) lapses after ``ttl`` and another process takes over.

- :class:`SqliteLease`: the batch's row (``owner``, ``lease_expires``) in the catalog, for the
  processes of one machine; line results are recorded only while the row still names the holder.
- :class:`RedisLease`: ``SET key owner NX PX ttl``, renewed and released by a script that checks
  the owner first, for gateways on several machines (beside the Redis catalog, which checks the
  key when it records a line: ``fenced``).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Any, Protocol

from gateway.batches.catalog import Catalog


def owner_id() -> str:
    """This process's name as a lease holder: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease(Protocol):
    owner: str
    ttl: float

    @property
    def fence(self) -> str | None:
        """The owner to check when a line's result is recorded (the row lease), else None."""
        ...

    async def acquire(self, batch_id: str) -> bool: ...

    async def renew(self, batch_id: str) -> bool:
        """Extend the lease; False when it was lost (lapsed and taken)."""
        ...

    async def release(self, batch_id: str) -> None: ...

    async def close(self) -> None: ...


class SqliteLease:
    def __init__(self, catalog: Catalog, owner: str, ttl: float = 30.0) -> None:
        self._catalog = catalog
        self.owner = owner
        self.ttl = ttl

    @property
    def fence(self) -> str | None:
        return self.owner

    async def acquire(self, batch_id: str) -> bool:
        now = time.time()
        return self._catalog.lease_acquire(batch_id, self.owner, now + self.ttl, now)

    async def renew(self, batch_id: str) -> bool:
        return self._catalog.lease_renew(batch_id, self.owner, time.time() + self.ttl)

    async def release(self, batch_id: str) -> None:
        self._catalog.lease_release(batch_id, self.owner)

    async def close(self) -> None:
        pass


# KEYS[1] the lease, ARGV[1] the owner, ARGV[2] milliseconds: extend only one's own lease
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


LEASE_PREFIX = "gateway:batch-lease:"


class RedisLease:
    def __init__(
        self, url: str, owner: str, ttl: float = 30.0, prefix: str = LEASE_PREFIX, fenced: bool = False
    ) -> None:
        import redis.asyncio

        self._redis: Any = redis.asyncio.from_url(url)
        self._prefix = prefix
        self._fenced = fenced
        self.owner = owner
        self.ttl = ttl
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    @property
    def fence(self) -> str | None:
        """The owner, when the catalog that records lines checks this lease's keys (the Redis one)."""
        return self.owner if self._fenced else None

    def _ms(self) -> int:
        return int(self.ttl * 1000)

    async def acquire(self, batch_id: str) -> bool:
        key = self._prefix + batch_id
        if await self._redis.set(key, self.owner, nx=True, px=self._ms()):
            return True
        return bool(await self._renew(keys=[key], args=[self.owner, self._ms()]))  # already ours

    async def renew(self, batch_id: str) -> bool:
        return bool(await self._renew(keys=[self._prefix + batch_id], args=[self.owner, self._ms()]))

    async def release(self, batch_id: str) -> None:
        await self._release(keys=[self._prefix + batch_id], args=[self.owner])

    async def close(self) -> None:
        await self._redis.aclose()
