"""multipart/form-data bodies (audio uploads): fields and one file, size-checked as they stream in."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.api.body import accept_body
from gateway.errors import InvalidRequest, MalformedRequest, PayloadTooLarge

MULTIPART = "multipart/form-data"
_MAX_FIELD_BYTES = 64 * 1024


@dataclass(slots=True)
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    file: bytes | None = None
    filename: str | None = None

    def one(self, name: str) -> str | None:
        values = self.fields.get(name)
        if values is None:
            return None
        if len(values) > 1:
            raise InvalidRequest(f"'{name}' is given {len(values)} times", param=name)
        return values[0]


async def read_form(request: web.Request, max_bytes: int, file_field: str = "file") -> Form:
    """The form's text fields and its file (``file_field``); 413 once more than ``max_bytes`` arrive."""
    await accept_body(request, MULTIPART, max_bytes)
    form = Form()
    total = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                raise InvalidRequest("every part of the form must be a named field")
            limit = max_bytes - total if part.name == file_field else min(_MAX_FIELD_BYTES, max_bytes - total)
            data = await _read_part(part, limit, max_bytes)
            total += len(data)
            if part.name == file_field:
                if form.file is not None:
                    raise InvalidRequest(f"'{file_field}' is given twice", param=file_field)
                form.file, form.filename = data, part.filename
            else:
                form.fields.setdefault(part.name, []).append(data.decode("utf-8", "replace"))
    except (ValueError, AssertionError, HttpProcessingError, web.RequestPayloadError) as exc:
        raise MalformedRequest(f"We could not read the multipart body: {exc}") from None
    return form


async def _read_part(part: BodyPartReader, limit: int, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {max_bytes} bytes (or a field is too large)")
        chunks.append(chunk)
    return b"".join(chunks)
