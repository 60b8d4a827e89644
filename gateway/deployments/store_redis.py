"""Deployments in Redis, shared by every gateway of every machine, with change notification by pub/sub.

Keys under ``prefix``: ``records`` (a hash: id → the record's JSON), ``names`` and ``model_ids`` (hashes:
name or model id → id, which keep them unique), ``by_created`` (a sorted set of ids scored by creation
time) and ``by_name`` (a sorted set of names, all scored 0: in lexical order) for listing; the channel
``changes`` carries the id of every deployment created, changed or deleted. Each change is one
``WATCH``/``MULTI`` transaction on ``records`` (every change writes it), retried when another gateway
changed a deployment meanwhile; the publication is part of the transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from gateway.deployments.records import Deployment
from gateway.deployments.store_rules import (
    OrderBy,
    check_page,
    check_revision,
    first_revision,
    id_taken,
    matches,
    model_id_taken,
    name_taken,
    next_revision,
    ordered,
    page_of,
)

log = logging.getLogger(__name__)

Deployments = list[Deployment]  # (the method `list` hides the builtin in the class body)
RETRIES = 3  # of a command whose connection broke
RESUBSCRIBE_S = 1.0  # the wait before subscribing again after a lost connection


class RedisDeploymentStore:
    """Deployments in Redis at ``url``, under keys beginning with ``prefix``."""

    def __init__(self, url: str, prefix: str = "gateway:deployments:") -> None:
        # a command on a connection the server dropped (a restart) is tried again on a new one; one inside a
        # WATCH fails with WatchError instead, and the transaction is tried again from the top
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES)
        self._redis: Any = Redis.from_url(url, decode_responses=True, retry=retry)  # redis-py's types: bytes | str
        self._url = url
        self._records = prefix + "records"
        self._names = prefix + "names"
        self._model_ids = prefix + "model_ids"
        self._by_created = prefix + "by_created"
        self._by_name = prefix + "by_name"
        self._channel = prefix + "changes"

    async def create(self, d: Deployment) -> Deployment:
        record = first_revision(d)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self._records)
                    if await pipe.hexists(self._records, record.id):
                        raise id_taken(record.id)
                    if await pipe.hexists(self._names, record.name):
                        raise name_taken(record.name)
                    owner = await pipe.hget(self._model_ids, record.model_id)
                    if owner is not None:
                        raise model_id_taken(record.model_id, owner)
                    pipe.multi()
                    pipe.hset(self._records, record.id, record.model_dump_json())
                    pipe.hset(self._names, record.name, record.id)
                    pipe.hset(self._model_ids, record.model_id, record.id)
                    pipe.zadd(self._by_created, {record.id: record.created_at})
                    pipe.zadd(self._by_name, {record.name: 0})
                    pipe.publish(self._channel, record.id)
                    await pipe.execute()
                    return record
                except WatchError:
                    continue  # another gateway changed a deployment meanwhile: look again

    async def get(self, deployment_id: str) -> Deployment | None:
        raw = await self._redis.hget(self._records, deployment_id)
        return None if raw is None else Deployment.model_validate_json(raw)

    async def get_by_model_id(self, model_id: str) -> Deployment | None:
        deployment_id = await self._redis.hget(self._model_ids, model_id)
        return None if deployment_id is None else await self.get(deployment_id)

    async def list(
        self,
        name: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        order_by: OrderBy = "created_at_asc",
        page: int = 1,
        per_page: int = 50,
    ) -> tuple[Deployments, int]:
        """Without filters, one page read from an index; with them, every record read and filtered here."""
        check_page(order_by, page, per_page)
        if name or tag or status:
            passed = [d for d in await self.all() if matches(d, name, tag, status)]
            return page_of(ordered(passed, order_by), page, per_page), len(passed)
        index = self._by_name if order_by.startswith("name") else self._by_created
        start = (page - 1) * per_page
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zcard(index)
            pipe.zrange(index, start, start + per_page - 1, desc=order_by.endswith("desc"))
            total, members = await pipe.execute()
        ids = members
        if index == self._by_name and members:
            ids = await self._redis.hmget(self._names, members)
        return await self._records_of([i for i in ids if i is not None]), int(total)

    async def _records_of(self, ids: Sequence[str]) -> Deployments:
        """The records of ``ids``, in that order (one deleted meanwhile is left out)."""
        if not ids:
            return []
        raws = await self._redis.hmget(self._records, ids)
        return [Deployment.model_validate_json(raw) for raw in raws if raw is not None]

    async def all(self) -> Deployments:
        raws = await self._redis.hvals(self._records)
        return ordered([Deployment.model_validate_json(raw) for raw in raws], "created_at_asc")

    async def update(
        self, deployment_id: str, expected_revision: int | None = None, **changes: object
    ) -> Deployment | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self._records)
                    raw = await pipe.hget(self._records, deployment_id)
                    if raw is None:
                        return None
                    current = Deployment.model_validate_json(raw)
                    check_revision(current, expected_revision)
                    record = next_revision(current, changes)
                    await self._check_unique(pipe, current, record)
                    pipe.multi()
                    pipe.hset(self._records, record.id, record.model_dump_json())
                    if record.name != current.name:
                        pipe.hdel(self._names, current.name)
                        pipe.hset(self._names, record.name, record.id)
                        pipe.zrem(self._by_name, current.name)
                        pipe.zadd(self._by_name, {record.name: 0})
                    if record.model_id != current.model_id:
                        pipe.hdel(self._model_ids, current.model_id)
                        pipe.hset(self._model_ids, record.model_id, record.id)
                    pipe.publish(self._channel, record.id)
                    await pipe.execute()
                    return record
                except WatchError:
                    continue

    async def _check_unique(self, pipe: Any, current: Deployment, record: Deployment) -> None:
        if record.name != current.name and await pipe.hexists(self._names, record.name):
            raise name_taken(record.name)
        if record.model_id != current.model_id:
            owner = await pipe.hget(self._model_ids, record.model_id)
            if owner is not None:
                raise model_id_taken(record.model_id, owner)

    async def delete(self, deployment_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self._records)
                    raw = await pipe.hget(self._records, deployment_id)
                    if raw is None:
                        return False
                    current = Deployment.model_validate_json(raw)
                    pipe.multi()
                    pipe.hdel(self._records, current.id)
                    pipe.hdel(self._names, current.name)
                    pipe.hdel(self._model_ids, current.model_id)
                    pipe.zrem(self._by_created, current.id)
                    pipe.zrem(self._by_name, current.name)
                    pipe.publish(self._channel, current.id)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def changes(self) -> AsyncIterator[str]:
        """The ids published on the channel. Messages sent while the connection is lost are gone: once
        subscribed again, every current id is given (a deletion meanwhile is not; see :meth:`all`)."""
        lost = False
        while True:
            # a client of its own, without retries: a lost connection must show, for the catching up
            listener: Any = Redis.from_url(self._url, decode_responses=True, retry=Retry(NoBackoff(), 0))
            pubsub = listener.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                if lost:
                    for d in await self.all():
                        yield d.id
                    lost = False
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        yield message["data"]
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("deployment changes: lost Redis (%s); subscribing again in %gs", exc, RESUBSCRIBE_S)
                lost = True
            finally:
                await pubsub.aclose()
                await listener.aclose()
            await asyncio.sleep(RESUBSCRIBE_S)

    async def close(self) -> None:
        await self._redis.aclose()
