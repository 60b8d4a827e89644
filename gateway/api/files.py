"""OpenAI's Files API: /v1/files (upload, list), /v1/files/{file_id} (get, delete) and its content.

An upload is streamed to the store as it arrives (never held in memory whole), up to
``max_file_bytes``. Files belong to the project of the key that uploaded them: another project's
keys get 404, as for a file that does not exist.
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.api.auth import principal_of
from gateway.api.body import accept_body
from gateway.api.context import BATCHES, now
from gateway.api.form import MULTIPART
from gateway.api.observe import stamp_headers
from gateway.batches.records import FileRecord
from gateway.batches.store import BlobWriter
from gateway.errors import InvalidRequest, MalformedRequest, ObjectNotFound, PayloadTooLarge

PURPOSES = ("batch",)  # what an upload may be for (batch_output files are the gateway's own)
MAX_LIST = 10_000  # OpenAI's largest (and default) page of files
_FIELD_BYTES = 64 * 1024
_FORM_OVERHEAD = 64 * 1024  # a multipart body's headers and fields beside the file
_CHUNK = 1 << 16


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


async def _found(request: web.Request) -> FileRecord:
    file_id = request.match_info["file_id"]
    record = await request.app[BATCHES].catalog.file(file_id, principal_of(request).project)
    if record is None:
        raise ObjectNotFound(f"No such File object: {file_id}", param="file_id")
    return record


def page_limit(request: web.Request, default: int, most: int) -> int:
    given = request.query.get("limit")
    if given is None:
        return default
    try:
        limit = int(given)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise InvalidRequest(f"Invalid 'limit': it must be an integer from 1 to {most}", param="limit")
    return limit


async def create_file(request: web.Request) -> web.Response:
    batches = request.app[BATCHES]
    limit = batches.max_file_bytes
    await accept_body(request, MULTIPART, limit + _FORM_OVERHEAD)
    file_id = f"file-{secrets.token_hex(12)}"
    fields: dict[str, str] = {}
    writer: BlobWriter | None = None
    filename = ""
    size = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise InvalidRequest("every part of the form must be a named field")
            if part.name != "file":
                if part.name in fields:
                    raise InvalidRequest(f"'{part.name}' is given twice", param=part.name)
                fields[part.name] = await _field(part)
                continue
            if writer is not None:
                raise InvalidRequest("'file' is given twice", param="file")
            writer = batches.blobs.writer(file_id)
            filename = part.filename or "file"
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The file exceeds the limit of {limit} bytes", param="file")
                await writer.write(chunk)
        purpose = _purpose(fields, writer)
    except (ValueError, AssertionError, HttpProcessingError, web.RequestPayloadError) as exc:
        if writer is not None:
            await writer.abort()
        raise MalformedRequest(f"We could not read the multipart body: {exc}") from None
    except BaseException:
        if writer is not None:
            await writer.abort()
        raise
    assert writer is not None
    record = FileRecord(file_id, principal_of(request).project, filename, purpose, await writer.commit(), now())
    await batches.catalog.add_file(record)
    return web.json_response(file_object(record))


async def _field(part: BodyPartReader) -> str:
    data = b""
    while chunk := await part.read_chunk(_CHUNK):
        data += chunk
        if len(data) > _FIELD_BYTES:
            raise PayloadTooLarge(f"The form field '{part.name}' is too large", param=part.name)
    return data.decode("utf-8", "replace")


def _purpose(fields: dict[str, str], writer: BlobWriter | None) -> str:
    extra = sorted(set(fields) - {"purpose"})
    if extra:
        raise InvalidRequest(f"Unrecognized request argument supplied: {extra[0]}", param=extra[0])
    if writer is None:
        raise InvalidRequest("Missing required parameter: 'file'", param="file")
    purpose = fields.get("purpose")
    if purpose is None:
        raise InvalidRequest("Missing required parameter: 'purpose'", param="purpose")
    if purpose not in PURPOSES:
        allowed = ", ".join(repr(p) for p in PURPOSES)
        raise InvalidRequest(
            f"Invalid value for 'purpose': {purpose!r}; this gateway accepts {allowed}", param="purpose"
        )
    return purpose


async def list_files(request: web.Request) -> web.Response:
    catalog = request.app[BATCHES].catalog
    project = principal_of(request).project
    query = request.query
    limit = page_limit(request, MAX_LIST, MAX_LIST)
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid 'order': it must be 'asc' or 'desc'", param="order")
    after_seq = None
    if "after" in query:
        after_seq = await catalog.file_seq(query["after"], project)
        if after_seq is None:
            raise InvalidRequest(f"Invalid 'after': no such file {query['after']!r}", param="after")
    records = await catalog.files(project, query.get("purpose"), after_seq, limit + 1, order == "desc")
    return web.json_response(page([file_object(r) for r in records[:limit]], len(records) > limit))


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more}


async def get_file(request: web.Request) -> web.Response:
    return web.json_response(file_object(await _found(request)))


async def delete_file(request: web.Request) -> web.Response:
    record = await _found(request)
    batches = request.app[BATCHES]
    if await batches.catalog.delete_file(record.id, record.project):
        await batches.blobs.delete(record.id)
    return web.json_response({"id": record.id, "object": "file", "deleted": True})


async def file_content(request: web.Request) -> web.StreamResponse:
    record = await _found(request)
    chunks = request.app[BATCHES].blobs.chunks(record.id)
    try:
        first = await anext(chunks, b"")
    except FileNotFoundError:
        raise ObjectNotFound(f"No such File object: {record.id}", param="file_id") from None
    shown = "".join(c for c in record.filename if " " <= c <= "~" and c not in '"\\') or "file"
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Content-Disposition": f'attachment; filename="{shown}"'}
    )
    response.content_length = record.bytes
    stamp_headers(request, response)
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response
