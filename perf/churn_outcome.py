"""How the churn benchmark reads an answer and names its outcome, and the record of one request.

Outcomes, one string per request:
- ``ok:<finish_reason>`` (``ok:length``, ``ok:stop``; n > 1: the distinct reasons joined with ``+``);
- ``disconnect``: the client closed the connection on purpose after 1-3 SSE events;
- ``http_<status>:<code>``: a non-200 answer, with the error body's ``code`` (or ``type``);
- ``sse_error:<code>``: an in-band ``data: {"error": ...}`` event;
- ``conn:<exception>``: the connection failed or broke (refused, reset, truncated chunk);
- ``hung``: no complete answer within the client timeout;
- ``truncated``: the stream ended cleanly but without ``[DONE]``;
- ``incomplete``: ``[DONE]`` came before every choice had its finish_reason;
- ``bad_finish:<reason>``: a finish_reason the request kind cannot have (synthetic streams are
  exactly ``max_tokens`` long, so ``length``; the stop-string kind must end with ``stop``);
- ``bad_body``: a 200 whose JSON body is unreadable or lacks its choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from perf.churn_mix import Kind

# --- reading answers (cheap byte checks; JSON only where needed) ---

_FINISH = b'"finish_reason":"'


def finish_reason_of(data: bytes) -> str | None:
    """The finish_reason of one SSE chunk (``None`` while the choice goes on)."""
    i = data.find(_FINISH)
    if i < 0:
        return None
    start = i + len(_FINISH)
    end = data.find(b'"', start)
    return data[start:end].decode() if end > start else None


def has_content(data: bytes) -> bool:
    """A chat chunk that carries text (not the role-only opening, not a finish chunk)."""
    return b'"content":"' in data and b'"content":""' not in data


def error_code(raw: bytes) -> str:
    """OpenAI error body (``{"error": {...}}``) -> its ``code``, else its ``type``, else ``unknown``."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "not_json"
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "unknown"
    return str(error.get("code") or error.get("type") or "unknown")


def finish_outcome(kind: Kind, reasons: Sequence[str]) -> str:
    """The outcome of an answer that ended normally with these finish reasons (one per choice)."""
    if len(reasons) < kind.n:
        return "incomplete"
    distinct = sorted(set(reasons))
    bad = [r for r in distinct if kind.expect and r not in kind.expect]
    if bad:
        return "bad_finish:" + "+".join(bad)
    return "ok:" + "+".join(distinct)


def nonstream_outcome(kind: Kind, raw: bytes) -> str:
    try:
        payload = orjson.loads(raw)
        reasons = [str(c["finish_reason"]) for c in payload["choices"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "bad_body"
    return finish_outcome(kind, reasons)


def outcome_class(outcome: str) -> str:
    """ok, disconnect, hung, or error."""
    if outcome.startswith("ok:"):
        return "ok"
    if outcome in ("disconnect", "hung"):
        return outcome
    return "error"


def unexpected(outcome: str, allowed: Sequence[str] = ()) -> bool:
    """An outcome that fails the gate: not ok, not an intended disconnect, not in ``allowed`` (prefixes)."""
    if outcome_class(outcome) in ("ok", "disconnect"):
        return False
    return not any(outcome.startswith(prefix) for prefix in allowed)


@dataclass(slots=True)
class Record:
    kind: str
    start: float  # seconds since the run began
    end: float
    outcome: str
    ttft: float = 0.0  # seconds to the first text (streams), 0 if none
