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

The Responses API's kinds (``/v1/responses``), whole or streamed:
- ``ok:<finish>``: the Response's status, ``incomplete`` (``incomplete_details.reason``
  ``max_output_tokens``, ``output_tokens`` = ``max_output_tokens``) or ``completed``, told
  ``function_call`` when it called a tool; ``bad_finish:<finish>`` where the kind cannot end so;
- ``bad_body:<what>``: a Response that is wrong: ``json``, ``output`` (no items, or an item unknown or
  malformed), ``call`` (a function call to a tool not offered, or its arguments no JSON object once
  completed), ``text`` (no call and no text), ``usage``, ``incomplete_details``;
- ``bad_event:<what>``: a stream that is wrong: ``json``, ``first`` (not ``response.created``),
  ``sequence`` (``sequence_number`` not 0, 1, 2, ...), ``delta`` (an empty text delta), ``status``
  (the closing event's type is not the response's status), ``text`` (the deltas do not add up to the
  response's text), ``failed`` (``response.failed`` without an ``error`` event), ``after_end`` (an
  event after the closing one); ``sse_error:<code>`` is an ``error`` event, ``truncated`` a stream
  that ended without its closing event.

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
from typing import Any, Protocol

import numpy as np
import orjson

from perf.churn_mix import EMBED_DIM, RESPONSES, RESPONSES_SHAPES, SYNTHETIC, Kind

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
    """A whole answer: a chat completion, or a Response."""
    if kind.api == RESPONSES:
        return response_outcome(kind, _json(raw))
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


# --- the Responses API ---


def response_finish(kind: Kind, response: Any) -> str:
    """What a Response object ended with (``incomplete``, ``completed``, ``function_call``), or
    ``bad_body:<what>``."""
    if not isinstance(response, dict) or response.get("object") != "response":
        return "bad_body:json"
    output = response.get("output")
    if not isinstance(output, list) or not output or not all(isinstance(item, dict) for item in output):
        return "bad_body:output"
    status = str(response.get("status"))
    calls = [item for item in output if item.get("type") == "function_call"]
    tools = {tool["name"] for tool in RESPONSES_SHAPES.get(kind.shape, {}).get("tools", ())}
    for call in calls:
        if call.get("name") not in tools or not isinstance(call.get("arguments"), str):
            return "bad_body:call"
        if call.get("status") == "completed" and not isinstance(_json(call["arguments"].encode()), dict):
            return "bad_body:call"
    texts = response_texts(output)
    if texts is None or len(texts) + len(calls) != len(output):
        return "bad_body:output"
    if kind.model == SYNTHETIC and not calls and not "".join(texts):  # it always says something
        return "bad_body:text"
    usage = response.get("usage")
    tokens = usage.get("output_tokens") if isinstance(usage, dict) else None
    if not isinstance(tokens, int) or tokens < 1:
        return "bad_body:usage"
    if status == "incomplete":
        details = response.get("incomplete_details")
        if not isinstance(details, dict) or details.get("reason") != "max_output_tokens":
            return "bad_body:incomplete_details"
        if tokens != response.get("max_output_tokens"):
            return "bad_body:usage"
    return "function_call" if status == "completed" and calls else status


def response_texts(output: list[dict[str, Any]]) -> list[str] | None:
    """The text of each message item of a Response's ``output`` (``None``: a message is malformed)."""
    texts = []
    for item in output:
        if item.get("type") != "message":
            continue
        parts = item.get("content")
        if not isinstance(parts, list) or any(
            not isinstance(p, dict) or not isinstance(p.get("text"), str) for p in parts
        ):
            return None
        texts.append("".join(p["text"] for p in parts))
    return texts


def response_outcome(kind: Kind, response: Any) -> str:
    """The outcome of a Response object, whole or closing a stream."""
    finish = response_finish(kind, response)
    return finish if finish.startswith("bad_") else finish_outcome(kind, [finish])


class StreamReader(Protocol):
    """Reads one stream's SSE data payloads as they come; ``text``: some text came already."""

    text: bool

    def event(self, data: bytes) -> str:
        """The outcome once this event settles it, else ``""``."""
        ...

    def end(self) -> str:
        """The outcome of a stream that ended cleanly without an event settling it."""
        ...


class ChatReader:
    """A chat completion stream: chunks with their finish reasons, then ``[DONE]``."""

    __slots__ = ("kind", "reasons", "text")

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.reasons: list[str] = []
        self.text = False

    def event(self, data: bytes) -> str:
        if data == b"[DONE]":
            return finish_outcome(self.kind, self.reasons)
        if data.startswith(b'{"error"'):
            return "sse_error:" + error_code(data)
        self.text = self.text or has_content(data)
        reason = finish_reason_of(data)
        if reason is not None:
            self.reasons.append(reason)
        return ""

    def end(self) -> str:
        return "truncated"


class ResponsesReader:
    """A Responses stream: typed events numbered from 0, opened by ``response.created``, non-empty text
    deltas, closed by ``response.completed`` or ``response.incomplete`` with the whole Response, then
    nothing; read to its end (the closing event's outcome is known then)."""

    __slots__ = ("closed", "deltas", "kind", "sequence", "text")

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.sequence = 0
        self.deltas: list[str] = []
        self.closed = ""  # the outcome of the closing event
        self.text = False

    def event(self, data: bytes) -> str:
        if self.closed:
            return "bad_event:after_end"
        payload = _json(data)
        if not isinstance(payload, dict):
            return "bad_event:json"
        typed = payload.get("type")
        if typed == "error":
            return "sse_error:" + error_code(data)
        if self.sequence == 0 and typed != "response.created":
            return "bad_event:first"
        if payload.get("sequence_number") != self.sequence:
            return "bad_event:sequence"
        self.sequence += 1
        if typed == "response.output_text.delta":
            delta = payload.get("delta")
            if not isinstance(delta, str) or not delta:
                return "bad_event:delta"
            self.deltas.append(delta)
            self.text = True
        elif typed in ("response.completed", "response.incomplete"):
            self.closed = self.close(typed, payload.get("response"))
        elif typed == "response.failed":
            return "bad_event:failed"
        return ""

    def close(self, typed: str, response: Any) -> str:
        """The outcome of the closing event ``typed``: its Response's, checked against the stream."""
        outcome = response_outcome(self.kind, response)
        if outcome.startswith("bad_"):
            return outcome
        if typed != "response." + str(response.get("status")):
            return "bad_event:status"
        texts = response_texts(response["output"])
        return outcome if texts is not None and "".join(texts) == "".join(self.deltas) else "bad_event:text"

    def end(self) -> str:
        return self.closed or "truncated"


def stream_reader(kind: Kind) -> StreamReader:
    return ResponsesReader(kind) if kind.api == RESPONSES else ChatReader(kind)


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
