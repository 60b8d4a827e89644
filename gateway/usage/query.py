"""The ledger summed: tokens per time bucket, project, model and kind (batch or interactive), and their cost."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.usage.ledger import connect

GroupBy = Literal["day", "hour"]
BUCKET_SECONDS: dict[GroupBy, int] = {"day": 86_400, "hour": 3_600}  # buckets start at UTC midnight / the hour
BATCH_PRICE = 0.5  # batch lines are billed at half the model's prices


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which records to sum, and into which buckets; None: no bound, no filter."""

    start: float | None = None  # unix seconds, inclusive
    end: float | None = None  # unix seconds, exclusive
    group_by: GroupBy = "day"
    projects: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    batch: bool | None = None

    @property
    def bucket_seconds(self) -> int:
        return BUCKET_SECONDS[self.group_by]


@dataclass(frozen=True, slots=True)
class Price:
    """A model's prices per 1,000 tokens (the config's unit, a currency of its choosing)."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0


@dataclass(frozen=True, slots=True)
class Cost:
    input: float = 0.0
    output: float = 0.0

    @property
    def total(self) -> float:
        return self.input + self.output

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.input + other.input, self.output + other.output)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """The records of one bucket, project, model and kind, summed."""

    bucket: int  # the bucket's start, unix seconds
    project: str
    model: str
    batch: bool
    requests: int
    input_tokens: int
    output_tokens: int

    def cost(self, price: Price) -> Cost:
        """What these tokens cost at ``price`` (batch: :data:`BATCH_PRICE` of it)."""
        factor = BATCH_PRICE if self.batch else 1.0
        return Cost(
            self.input_tokens * price.input_per_1k * factor / 1000,
            self.output_tokens * price.output_per_1k * factor / 1000,
        )


@dataclass(slots=True)
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Cost = field(default_factory=Cost)


def _in(column: str, values: tuple[str, ...], where: list[str], params: list[object]) -> None:
    where.append(f"{column} IN ({', '.join('?' * len(values))})")
    params.extend(values)


def aggregate(path: Path, query: UsageQuery) -> list[UsageRow]:
    """The ledger at ``path`` summed as ``query`` asks, ordered by bucket, project, model, kind.

    Blocking (SQLite): call it off the event loop. A file that does not exist yet holds no usage.
    """
    if not path.exists():
        return []
    where: list[str] = []
    params: list[object] = [query.bucket_seconds, query.bucket_seconds]
    if query.start is not None:
        where.append("time >= ?")
        params.append(query.start)
    if query.end is not None:
        where.append("time < ?")
        params.append(query.end)
    if query.projects is not None:
        _in("project", query.projects, where, params)
    if query.models is not None:
        _in("model", query.models, where, params)
    if query.batch is not None:
        where.append("batch = ?")
        params.append(int(query.batch))
    sql = (
        "SELECT CAST(time / ? AS INTEGER) * ? AS bucket, project, model, batch,"
        " COUNT(*), SUM(input_tokens), SUM(output_tokens) FROM usage"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + " GROUP BY bucket, project, model, batch ORDER BY bucket, project, model, batch"
    )
    conn = connect(path, read_only=True)
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    return [UsageRow(int(b), p, m, bool(k), n, i, o) for b, p, m, k, n, i, o in rows]


def totals(rows: Iterable[UsageRow], prices: Mapping[str, Price]) -> Totals:
    """Requests, tokens and cost of ``rows``; a model without a price costs nothing."""
    total = Totals()
    free = Price()
    for row in rows:
        total.requests += row.requests
        total.input_tokens += row.input_tokens
        total.output_tokens += row.output_tokens
        total.cost += row.cost(prices.get(row.model, free))
    return total
