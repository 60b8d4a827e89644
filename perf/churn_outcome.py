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

The other APIs' kinds (embeddings, rerank, transcriptions):
- ``ok:embeddings``: one unit vector of ``EMBED_DIM`` finite floats per input, in order, and a token count;
- ``ok:rerank``: ``min(top_n, documents)`` results, distinct indices in range, scores in [-1, 1] and sorted
  best first, each with its document's text unless ``return_documents`` is false;
- ``ok:transcript``: a non-empty ``text``;
- ``ok:rejected``: an invalid request (``embed_bad``) answered 400 with an OpenAI error body
  (``invalid_request_error``), as it must be;
- ``bad_status:<status>``: a status the kind must not get where it expects another (a 200 to an invalid
  request); other non-200 answers are ``http_<status>:<code>`` as above;
- ``bad_body:<what>``: a 200 whose body is wrong: ``json``, ``count``, ``index``, ``dim``, ``value``, ``norm``,
  ``usage``, ``score``, ``order``, ``document``, ``text``, ``error_shape`` (a 400 without the error body);
- ``disconnect``: the client closed the connection right after sending the request (``embed_disconnect``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from perf.churn_mix import EMBED_DIM, Kind

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


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def embeddings_outcome(body: dict[str, Any], raw: bytes, dim: int = EMBED_DIM) -> str:
    """The answer to the embeddings request ``body`` (texts): one unit vector per input, in order."""
    given = body["input"]
    count = 1 if isinstance(given, str) else len(given)
    payload = _json(raw)
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return "bad_body:json"
    if len(data) != count:
        return "bad_body:count"
    if any(not isinstance(d, dict) or d.get("index") != i for i, d in enumerate(data)):
        return "bad_body:index"
    vectors = [d.get("embedding") for d in data]
    if any(not isinstance(v, list) or len(v) != dim for v in vectors):
        return "bad_body:dim"
    try:
        array = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError):
        return "bad_body:value"
    if not np.isfinite(array).all():
        return "bad_body:value"
    if np.abs(np.linalg.norm(array, axis=1) - 1.0).max() > 1e-3:
        return "bad_body:norm"
    usage = payload.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(tokens, int) or tokens < count:
        return "bad_body:usage"
    return "ok:embeddings"


def rerank_outcome(body: dict[str, Any], raw: bytes) -> str:
    """The answer to the rerank request ``body``: its top documents, best first."""
    documents = body["documents"]
    top_n = body.get("top_n")
    want = min(top_n, len(documents)) if top_n else len(documents)
    payload = _json(raw)
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        return "bad_body:json"
    if len(results) != want:
        return "bad_body:count"
    indices = [r.get("index") for r in results]
    if any(type(i) is not int or not 0 <= i < len(documents) for i in indices) or len(set(indices)) != want:
        return "bad_body:index"
    scores = [r.get("relevance_score") for r in results]
    if any(not isinstance(s, float | int) or not math.isfinite(s) or abs(s) > 1.0 + 1e-4 for s in scores):
        return "bad_body:score"
    if any(a < b for a, b in itertools.pairwise(scores)):
        return "bad_body:order"
    if body.get("return_documents", True):
        if any(r.get("document") != {"text": documents[i]} for r, i in zip(results, indices, strict=True)):
            return "bad_body:document"
    elif any("document" in r for r in results):
        return "bad_body:document"
    return "ok:rerank"


def transcript_outcome(raw: bytes) -> str:
    """A transcription (``response_format`` json): its text must not be empty."""
    payload = _json(raw)
    text = payload.get("text") if isinstance(payload, dict) else None
    if not isinstance(text, str):
        return "bad_body:json"
    return "ok:transcript" if text.strip() else "bad_body:text"


def rejected_outcome(raw: bytes) -> str:
    """A 400 to an invalid request: it must carry OpenAI's error body, typed invalid_request_error."""
    payload = _json(raw)
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or error.get("type") != "invalid_request_error" or not error.get("message"):
        return "bad_body:error_shape"
    return "ok:rejected"


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
