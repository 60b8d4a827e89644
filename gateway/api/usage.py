"""The usage ledger on REST: its cleanup context, the record of each request, and GET /v1/usage.

GET /v1/usage sums the ledger per time bucket, project, model and kind (interactive or batch), with
each row's cost at the models' configured prices. An admin key reads every project (``project``
filters), a project's key only its own (another project: 403), anyone when auth is off.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.context import CONFIG, LEDGER, PRINCIPAL, REGISTRY, REQUEST_ID
from gateway.core.job import Job
from gateway.core.plan import Plan
from gateway.errors import Forbidden, InvalidRequest
from gateway.usage.account import account
from gateway.usage.ledger import Ledger
from gateway.usage.query import Cost, GroupBy, Price, UsageQuery, UsageRow, aggregate, totals

_PARAMS = ("start", "end", "group_by", "project", "model", "batch")
_FREE = Price()
_GROUPS: dict[str, GroupBy] = {"day": "day", "hour": "hour"}


async def ledger_context(app: web.Application) -> AsyncIterator[None]:
    """The ledger at ``usage_db`` (default ``data_dir/usage.sqlite``); written out on shutdown. A file
    that cannot be written stops the start-up: requests would go unrecorded."""
    config = app[CONFIG]
    path = config.usage_db or config.data_dir / "usage.sqlite"
    try:
        ledger = app[LEDGER] = await asyncio.to_thread(Ledger, path)
    except (OSError, sqlite3.Error) as exc:
        raise OSError(
            f"usage ledger {path}: {exc} (set usage_db, or data_dir / GATEWAY_DATA_DIR, to a writable place)"
        ) from exc
    yield
    await asyncio.to_thread(ledger.close)


def record_request(request: web.Request, route: str, status: int, work: Plan | Job | None) -> None:
    """Append the ledger record of a finished REST request (one whose caller passed authentication)."""
    ledger = request.app.get(LEDGER)
    principal = request.get(PRINCIPAL)
    if ledger is not None and principal is not None:
        account(ledger, principal, route.removeprefix("/{project_id}"), status, request[REQUEST_ID], work)


async def get_usage(request: web.Request) -> web.Response:
    query = _query(request)
    prices = {
        m.id: Price(m.config.price_input_per_1k, m.config.price_output_per_1k) for m in request.app[REGISTRY].models()
    }
    rows = await asyncio.to_thread(_read, request.app[LEDGER], query)
    return web.json_response(_body(query, rows, prices))


def _read(ledger: Ledger, query: UsageQuery) -> list[UsageRow]:
    ledger.flush()  # this process's requests so far are in (other workers': within their flush interval)
    return aggregate(ledger.path, query)


def _query(request: web.Request) -> UsageQuery:
    params = request.query
    for name in params:
        if name not in _PARAMS:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'", param=name)
    group_by = _GROUPS.get(params.get("group_by", "day"))
    if group_by is None:
        raise InvalidRequest("Invalid value for 'group_by': expected 'day' or 'hour'", param="group_by")
    start, end = _time(params.get("start"), "start"), _time(params.get("end"), "end")
    if start is not None and end is not None and end <= start:
        raise InvalidRequest("'end' must be after 'start'", param="end")
    return UsageQuery(
        start=start,
        end=end,
        group_by=group_by,
        projects=_projects(request, tuple(params.getall("project", ()))),
        models=tuple(params.getall("model", ())) or None,
        batch=_flag(params.get("batch"), "batch"),
    )


def _projects(request: web.Request, asked: tuple[str, ...]) -> tuple[str, ...] | None:
    """The projects the caller may read and asked for; None: every project."""
    principal = principal_of(request)
    scoped = request.match_info.get("project_id")  # the auth middleware checked it is the key's own
    if scoped is None and ((principal.key_id == "" and principal.authenticated) or principal.admin):  # auth off
        return asked or None
    own = scoped or principal.project
    other = next((p for p in asked if p != own), None)
    if other is not None:
        raise Forbidden(f"This key may not read the usage of project '{other}'", param="project")
    return (own,)


def _time(value: str | None, name: str) -> float | None:
    """Unix seconds, or an ISO 8601 date or time (UTC unless it names its offset)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRequest(
                f"Invalid value for '{name}': expected unix seconds or an ISO 8601 date (2025-01-31)", param=name
            ) from None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"Invalid value for '{name}': expected unix seconds", param=name)
    return seconds


def _flag(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidRequest(f"Invalid value for '{name}': expected true or false", param=name)


def _cost(cost: Cost) -> dict[str, float]:
    return {"input": round(cost.input, 9), "output": round(cost.output, 9), "total": round(cost.total, 9)}


def _body(query: UsageQuery, rows: list[UsageRow], prices: dict[str, Price]) -> dict[str, Any]:
    width = query.bucket_seconds
    buckets: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        buckets.setdefault(row.bucket, []).append(
            {
                "object": "usage.result",
                "project_id": row.project,
                "model": row.model,
                "batch": row.batch,
                "num_requests": row.requests,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "cost": _cost(row.cost(prices.get(row.model, _FREE))),
            }
        )
    total = totals(rows, prices)
    return {
        "object": "page",
        "group_by": query.group_by,
        "start_time": query.start,
        "end_time": query.end,
        "data": [
            {"object": "bucket", "start_time": start, "end_time": start + width, "results": results}
            for start, results in buckets.items()
        ],
        "totals": {
            "num_requests": total.requests,
            "input_tokens": total.input_tokens,
            "output_tokens": total.output_tokens,
            "cost": _cost(total.cost),
        },
        "has_more": False,
    }
