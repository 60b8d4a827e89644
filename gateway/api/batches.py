"""OpenAI's Batches API: /v1/batches (create, list), /v1/batches/{batch_id} and its cancel; and the
cleanup context that runs this process's batch runner (:mod:`gateway.batches.runner`).

A batch belongs to the project of the key that created it, and its lines run as that key (its
models); other projects' keys get 404.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field, StringConstraints, field_validator

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json
from gateway.api.context import BATCHES, CONFIG, KEYS, LEDGER, REGISTRY, now
from gateway.api.files import page, page_limit
from gateway.api.schema import WireModel
from gateway.auth.keys import Principal
from gateway.batches.lease import owner_id
from gateway.batches.records import CANCELLABLE, STATUS_TIMES, BatchRecord
from gateway.batches.runner import Runner, UsageHook
from gateway.batches.state import Batches
from gateway.core.lifecycle import LIFECYCLE
from gateway.errors import InvalidRequest, ObjectNotFound
from gateway.usage.records import UsageRecord

WINDOW_SECONDS = {"24h": 24 * 3600}
MAX_METADATA = 16  # OpenAI's metadata: up to 16 pairs, keys of up to 64 characters, values of up to 512
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class BatchCreateRequest(WireModel):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None)

    @field_validator("metadata")
    @classmethod
    def _pairs(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} pairs")
        return value


def batch_object(batch: BatchRecord) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": None if batch.errors is None else {"object": "list", "data": batch.errors},
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "expires_at": batch.expires_at,
    }
    for status, column in STATUS_TIMES.items():
        document[column] = batch.times.get(status)
    document["request_counts"] = {"total": batch.total, "completed": batch.completed, "failed": batch.failed}
    document["usage"] = {
        "input_tokens": batch.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": batch.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": batch.input_tokens + batch.output_tokens,
    }
    document["metadata"] = batch.metadata
    return document


async def _found(request: web.Request) -> BatchRecord:
    batch_id = request.match_info["batch_id"]
    batch = await request.app[BATCHES].catalog.batch(batch_id, principal_of(request).project)
    if batch is None:
        raise ObjectNotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return batch


async def create_batch(request: web.Request) -> web.Response:
    body = parse(BatchCreateRequest, await read_json(request, request.app[CONFIG].max_body_bytes), {})
    principal = principal_of(request)
    batches = request.app[BATCHES]
    source = await batches.catalog.file(body.input_file_id, principal.project)
    if source is None:
        raise ObjectNotFound(f"No such File object: {body.input_file_id}", param="input_file_id")
    if source.purpose != "batch":
        raise InvalidRequest(
            f"The file {source.id} has purpose {source.purpose!r}: a batch's input is uploaded with purpose 'batch'",
            param="input_file_id",
        )
    created = now()
    batch = BatchRecord(
        id=f"batch_{secrets.token_hex(12)}",
        project=principal.project,
        key_id=principal.key_id,
        endpoint=body.endpoint,
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        status="validating",
        created_at=created,
        expires_at=created + WINDOW_SECONDS[body.completion_window],
        metadata=body.metadata,
    )
    await batches.catalog.add_batch(batch)
    batches.wake()
    return web.json_response(batch_object(batch))


async def get_batch(request: web.Request) -> web.Response:
    return web.json_response(batch_object(await _found(request)))


async def list_batches(request: web.Request) -> web.Response:
    catalog = request.app[BATCHES].catalog
    project = principal_of(request).project
    limit = page_limit(request, 20, 100)
    after_seq = None
    if "after" in request.query:
        after_seq = await catalog.batch_seq(request.query["after"], project)
        if after_seq is None:
            raise InvalidRequest(f"Invalid 'after': no such batch {request.query['after']!r}", param="after")
    found = await catalog.batches(project, after_seq, limit + 1)
    return web.json_response(page([batch_object(b) for b in found[:limit]], len(found) > limit))


async def cancel_batch(request: web.Request) -> web.Response:
    batch = await _found(request)
    batches = request.app[BATCHES]
    if batch.status in CANCELLABLE:
        await batches.catalog.cancel(batch.id, batch.project, now())
        batches.wake()
    elif batch.status not in ("cancelling", "cancelled"):
        raise InvalidRequest(f"Cannot cancel a batch with status '{batch.status}'", param="batch_id")
    return web.json_response(batch_object(await _found(request)))


def record_batch_usage(app: web.Application) -> UsageHook:
    """The usage ledger's hook: one record per batch line that ran (``batch=True``: billed as batch)."""

    async def record(
        principal: Principal, batch: BatchRecord, request_id: str, status: int, model: str, tokens: tuple[int, int]
    ) -> None:
        ledger = app.get(LEDGER)
        if ledger is None:
            return
        ledger.append(
            UsageRecord(
                project=principal.project,
                model=model,
                endpoint=batch.endpoint,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                status=status,
                batch=True,
                key_id=principal.key_id,
                request_id=request_id,
            )
        )

    return record


async def batch_context(app: web.Application) -> AsyncIterator[None]:
    """The Files and Batches state, and this process's batch runner: started once the models are,
    stopped before them (SIGTERM: the lines in flight finish first, within ``drain_timeout``)."""
    config = app[CONFIG]
    batches = app[BATCHES] = Batches.configured(config)
    lease = batches.catalog.lease(owner_id())
    runner = Runner(
        batches,
        lease,
        app[KEYS],
        app[REGISTRY],
        config.batch_concurrency,
        config.max_body_bytes,
        on_usage=record_batch_usage(app),
    )
    batches.wake = runner.wake
    runner.start()
    yield
    await runner.stop(finish=LIFECYCLE.draining, within=config.drain_timeout)
    await lease.close()
    await batches.close()
