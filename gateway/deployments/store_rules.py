"""What every deployment store does alike: revisions, conflicts, and the filters, orders and pages of a listing.

A stored record's ``revision`` starts at 1 and grows by one with every update; ``updated_at`` follows.
A listing's orders break ties by id, and compare names by code point (SQLite's BINARY collation, Redis's
lexical order and Python's ``str`` agree on it), so that every store pages alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from gateway.deployments.records import Deployment, now
from gateway.errors import Conflict, RevisionMismatch

OrderBy = Literal["created_at_asc", "created_at_desc", "name_asc", "name_desc"]
ORDERS: tuple[OrderBy, ...] = get_args(OrderBy)
FIXED = frozenset({"id", "revision", "created_at", "updated_at"})  # what update() may not change


def first_revision(d: Deployment) -> Deployment:
    """The record as created: revision 1."""
    return d.model_copy(update={"revision": 1})


def check_revision(current: Deployment, expected: int | None) -> None:
    """Compare-and-set: ``expected`` (None: any) must be the current revision."""
    if expected is not None and expected != current.revision:
        raise RevisionMismatch(
            f"deployment {current.id} is at revision {current.revision}, not {expected}", param="revision"
        )


def next_revision(current: Deployment, changes: Mapping[str, object]) -> Deployment:
    """``current`` with ``changes`` (validated as the record's fields), the next revision, updated now.

    A change to a field the record lacks, a value it does not accept (pydantic's ValidationError), or to
    one of :data:`FIXED`: ValueError.
    """
    fixed = FIXED & changes.keys()
    if fixed:
        raise ValueError(f"a deployment's {', '.join(sorted(fixed))} cannot be changed")
    data = {**current.model_dump(), **changes}
    data["revision"] = current.revision + 1
    data["updated_at"] = max(now(), current.updated_at)
    return Deployment.model_validate(data)


def name_taken(name: str) -> Conflict:
    return Conflict(f"a deployment named {name!r} exists already", param="name")


def model_id_taken(model_id: str, owner: str) -> Conflict:
    return Conflict(f"the model id {model_id!r} is served by deployment {owner}", param="model_id")


def id_taken(deployment_id: str) -> Conflict:
    return Conflict(f"a deployment with id {deployment_id!r} exists already", param="id")


def check_page(order_by: str, page: int, per_page: int) -> None:
    if order_by not in ORDERS:
        raise ValueError(f"order_by must be one of {', '.join(ORDERS)}, not {order_by!r}")
    if page < 1 or per_page < 1:
        raise ValueError(f"page and per_page count from 1 (page {page}, per_page {per_page})")


def matches(d: Deployment, name: str | None, tag: str | None, status: str | None) -> bool:
    """The filters of a listing: ``name`` a substring of the name (case counts), ``tag`` one of the tags,
    ``status`` the status; None or empty: no filter."""
    return (not name or name in d.name) and (not tag or tag in d.tags) and (not status or d.status == status)


def ordered(deployments: list[Deployment], order_by: OrderBy) -> list[Deployment]:
    if order_by.startswith("name"):
        return sorted(deployments, key=lambda d: d.name, reverse=order_by == "name_desc")
    return sorted(deployments, key=lambda d: (d.created_at, d.id), reverse=order_by == "created_at_desc")


def page_of(deployments: list[Deployment], page: int, per_page: int) -> list[Deployment]:
    start = (page - 1) * per_page
    return deployments[start : start + per_page]
