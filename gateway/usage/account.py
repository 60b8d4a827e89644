"""The record of one finished request, from what the transports know of it (REST and gRPC alike)."""

from __future__ import annotations

import time

from gateway.auth.keys import Principal
from gateway.core.job import Job
from gateway.core.plan import Plan
from gateway.usage.ledger import Ledger
from gateway.usage.records import CLIENT_CLOSED, UsageRecord

# a generation whose client went away is recorded this long after, once its models have stopped (in-band,
# at their next step) and the last counts of its choices are in
SETTLE_S = 2.0


def account(
    ledger: Ledger, principal: Principal, endpoint: str, status: int, request_id: str, work: Plan | Job | None
) -> None:
    """Append the record of a request of ``principal`` that ended with ``status``.

    The tokens are the request's own counts (``work.stats``), the numbers its response's ``usage``
    reported; ``work`` None: a request that used no model (0 tokens).
    """
    if work is None:
        ledger.append(
            UsageRecord(
                project=principal.project,
                model="",
                endpoint=endpoint,
                status=status,
                key_id=principal.key_id,
                request_id=request_id,
            )
        )
        return
    model, stats, ended = work.model.id, work.stats, time.time()

    def record() -> UsageRecord:
        return UsageRecord(
            project=principal.project,
            model=model,
            endpoint=endpoint,
            input_tokens=stats.prompt_tokens,
            output_tokens=stats.completion_tokens,
            status=status,
            key_id=principal.key_id,
            request_id=request_id,
            time=ended,
        )

    if status == CLIENT_CLOSED and isinstance(work, Plan):  # its models may still be stopping
        ledger.append_later(SETTLE_S, record)
    else:
        ledger.append(record())
