"""The churn benchmark's pure parts: arguments, the request mix, the bodies of every kind, outcome
classification, aggregation and the gate (perf/churn*.py). No network, no processes."""

from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from gateway.api.admin_schema import DeploymentCreate
from gateway.api.responses_events import ResponseEvents
from gateway.api.responses_schema import ResponsesRequest
from gateway.api.retrieval_schema import EmbeddingRequest, RerankRequest
from gateway.core.types import ChoiceOutput, Delta, FinishReason, ToolCallDelta, Usage
from gateway.errors import UpstreamUnavailable
from perf import churn
from perf.churn import parse_args
from perf.churn_deployments import (
    KIND,
    STREAM,
    TRITON_MODEL,
    Cycle,
    cycle_outcome,
    deployment_body,
    stream_failure,
    summarize_cycles,
)
from perf.churn_http import api_outcome, parse_metric
from perf.churn_mix import (
    BAD_EMBEDDINGS,
    CHAT,
    DEFAULT_MIX,
    EMBED_DIM,
    GENERATE,
    KINDS,
    PATHS,
    RESPONSES,
    SHAPES,
    Mix,
    api_body,
    parse_mix,
    request_body,
)
from perf.churn_outcome import (
    Record,
    embeddings_outcome,
    error_code,
    finish_outcome,
    finish_reason_of,
    has_content,
    nonstream_outcome,
    outcome_class,
    rejected_outcome,
    rerank_outcome,
    response_outcome,
    stream_reader,
    transcript_outcome,
    unexpected,
)
from perf.churn_report import format_summary, progress_line
from perf.churn_sampler import Sample
from perf.churn_summary import failures, resources, summarize, timeline, triton_changes
from perf.sse import SSEParser

# --- arguments ---


def test_defaults() -> None:
    args = parse_args([])
    assert not args.launch
    assert args.url == "http://127.0.0.1:8080"
    assert args.duration == 600
    assert args.concurrency == 16
    assert args.request_timeout == 120
    assert args.weights == parse_mix(DEFAULT_MIX)
    assert args.allow == []
    assert (args.embed_model, args.transcribe_model) == ("all-minilm-l6-v2", "whisper-base")


def test_launch_and_options() -> None:
    args = parse_args(
        ["--launch", "--duration", "60", "--concurrency", "8", "--mix", "one_token=1,disconnect=3", "--seed", "7"]
    )
    assert args.launch
    assert (args.duration, args.concurrency, args.seed) == (60, 8, 7)
    assert args.weights == {"one_token": 1.0, "disconnect": 3.0}


def test_allow_is_repeatable_and_comma_separated() -> None:
    args = parse_args(["--allow", "http_503:server_overloaded,http_429", "--allow", "hung"])
    assert args.allow == ["http_503:server_overloaded", "http_429", "hung"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--launch", "--url", "http://x:1"],
        ["--concurrency", "0"],
        ["--duration", "0"],
        ["--request-timeout", "-1"],
        ["--mix", "nope=1"],
        ["--mix", "one_token=0"],
        ["--real-max-tokens", "0"],
    ],
)
def test_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


# --- the mix ---


def test_parse_mix() -> None:
    assert parse_mix("one_token=2, stop=1.5,,n2=0") == {"one_token": 2.0, "stop": 1.5}
    assert parse_mix("stop=1,stop=2") == {"stop": 3.0}
    for bad in ("stop", "stop=x", "stop=-1", "stop=inf", "", "unknown=1", "stop=0"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_default_mix_covers_every_kind_mostly_synthetic() -> None:
    weights = parse_mix(DEFAULT_MIX)
    assert set(weights) == set(KINDS)
    shares = Mix(weights).shares()
    assert math.isclose(sum(shares.values()), 1.0)
    real = sum(share for name, share in shares.items() if KINDS[name].model == "real")
    assert 0 < real <= 0.1
    responses = {name: share for name, share in shares.items() if KINDS[name].api == RESPONSES}
    assert set(responses) == {"responses", "responses_stream", "responses_disconnect", "real_responses_tools"}
    assert 0 < sum(responses.values()) <= 0.1 and responses["real_responses_tools"] <= 0.005
    other = {name: share for name, share in shares.items() if KINDS[name].api not in GENERATE}  # modest, rare if costly
    assert set(other) == {"embed", "embed_big", "rerank", "embed_disconnect", "embed_bad", "transcribe"}
    assert 0 < sum(other.values()) <= 0.06
    assert all(other[name] <= 0.005 for name in ("embed_big", "embed_disconnect", "transcribe"))


def test_mix_picks_by_weight() -> None:
    mix = Mix({"one_token": 1.0, "stop": 3.0, "n2": 6.0})
    rng = random.Random(1)
    counts = Counter(mix.pick(rng) for _ in range(20000))
    assert set(counts) == {"one_token", "stop", "n2"}
    assert counts["one_token"] / 20000 == pytest.approx(0.1, abs=0.015)
    assert counts["stop"] / 20000 == pytest.approx(0.3, abs=0.015)
    assert counts["n2"] / 20000 == pytest.approx(0.6, abs=0.015)
    assert Mix({"stop": 1.0}).pick(random.Random(0)) == "stop"


def test_mix_is_deterministic_for_a_seed() -> None:
    mix = Mix(parse_mix(DEFAULT_MIX))
    a, b = random.Random("0:3"), random.Random("0:3")
    assert [mix.pick(a) for _ in range(50)] == [mix.pick(b) for _ in range(50)]


def test_request_bodies() -> None:
    one = request_body(KINDS["one_token"], "synthetic", 8)
    assert one["max_tokens"] == 1 and one["stream"] is True and one["stream_options"] == {"include_usage": True}
    assert "n" not in one and "stop" not in one
    stop = request_body(KINDS["stop"], "synthetic", 8)
    assert stop["stop"] == ["lazy"]  # occurs in the synthetic model's cyclic text
    n2 = request_body(KINDS["n2_nonstream"], "synthetic", 8)
    assert n2["n"] == 2 and n2["stream"] is False and "stream_options" not in n2
    real = request_body(KINDS["real_stream"], "smollm2-135m-instruct", 5)
    assert real["model"] == "smollm2-135m-instruct" and real["max_tokens"] == 5
    assert request_body(KINDS["long_stream"], "synthetic", 5)["max_tokens"] == 256
    assert all(KINDS[k].disconnect for k in ("disconnect", "real_disconnect", "responses_disconnect"))


def test_responses_bodies_are_valid_requests() -> None:
    whole = request_body(KINDS["responses"], "synthetic", 8)
    assert whole == {
        "model": "synthetic",
        "input": "Say something.",
        "max_output_tokens": 32,
        "temperature": 0,
        "stream": False,
    }
    assert request_body(KINDS["responses_stream"], "synthetic", 8)["stream"] is True
    tools = request_body(KINDS["real_responses_tools"], "smollm2-135m-instruct", 8)
    city = SHAPES["tools"]["tools"][0]["function"]["parameters"]  # chat's tool, in the flat shape
    assert tools["tools"] == [{"type": "function", "name": "get_weather", "parameters": city}]
    assert (tools["tool_choice"], tools["parallel_tool_calls"], tools["max_output_tokens"]) == ("required", False, 48)
    for kind in KINDS.values():
        if kind.api == RESPONSES:
            ResponsesRequest.model_validate(request_body(kind, "m", 8))  # what the gateway accepts


# --- the other APIs' bodies ---


def _texts(given: str | list[str]) -> list[str]:
    return [given] if isinstance(given, str) else given


def test_embed_bodies() -> None:
    rng = random.Random(3)
    sizes = set()
    for _ in range(300):
        body = api_body(KINDS["embed"], "all-minilm-l6-v2", rng)
        texts = _texts(body["input"])
        sizes.add(len(texts))
        assert body["model"] == "all-minilm-l6-v2"
        assert 1 <= len(texts) <= 64 and all(isinstance(t, str) and t for t in texts)
        EmbeddingRequest.model_validate(body)  # what the gateway accepts
    assert min(sizes) == 1 and max(sizes) >= 60  # the whole range is drawn
    assert any(isinstance(api_body(KINDS["embed"], "m", random.Random(i))["input"], str) for i in range(100))
    big = api_body(KINDS["embed_big"], "m", rng)
    assert len(big["input"]) == 300  # more than the model's max_batch_size (256): two Triton batches
    assert len(api_body(KINDS["embed_disconnect"], "m", rng)["input"]) == 256
    a, b = random.Random("0:1"), random.Random("0:1")
    assert api_body(KINDS["embed"], "m", a) == api_body(KINDS["embed"], "m", b)  # deterministic for a seed


def test_rerank_bodies() -> None:
    rng = random.Random(5)
    seen_top, seen_hidden = False, False
    for _ in range(200):
        body = api_body(KINDS["rerank"], "all-minilm-l6-v2", rng)
        assert 5 <= len(body["documents"]) <= 20 and body["query"]
        seen_top |= "top_n" in body
        seen_hidden |= body.get("return_documents") is False
        RerankRequest.model_validate(body)
    assert seen_top and seen_hidden


def test_bad_embeddings_bodies_are_invalid() -> None:
    rng = random.Random(0)
    drawn = [api_body(KINDS["embed_bad"], "all-minilm-l6-v2", rng) for _ in range(200)]
    assert all(body["model"] == "all-minilm-l6-v2" for body in drawn)
    assert {orjson.dumps({k: v for k, v in b.items() if k != "model"}) for b in drawn} == {
        orjson.dumps(b) for b in BAD_EMBEDDINGS
    }
    for bad in BAD_EMBEDDINGS:
        if isinstance(bad.get("input"), str) and len(bad["input"]) > 1000:
            continue  # valid in shape, but longer than the model's context: refused after tokenizing
        with pytest.raises(ValueError):
            EmbeddingRequest.model_validate({"model": "m", **bad})
    assert KINDS["embed_bad"].status == 400


def test_kinds_and_paths() -> None:
    assert all(KINDS[k].api == CHAT for k in ("one_token", "real_tools", "real_json_disconnect"))
    assert {KINDS[k].api for k in KINDS} == set(PATHS)
    assert KINDS["embed_disconnect"].disconnect and not KINDS["embed"].disconnect
    with pytest.raises(ValueError):
        api_body(KINDS["transcribe"], "whisper-base", random.Random(0))  # a form, built by the HTTP layer


def test_make_speech_fails_clearly_without_espeak(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(churn.shutil, "which", lambda _: None)
    with pytest.raises(SystemExit, match="espeak-ng"):
        churn.make_speech(tmp_path)


# --- reading the other APIs' answers ---


def _embeddings(n: int, dim: int = EMBED_DIM, **overrides: Any) -> bytes:
    vector = [1.0 / math.sqrt(dim)] * dim
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(n)]
    return orjson.dumps({"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 3 * n}, **overrides})


def test_embeddings_outcomes() -> None:
    three = {"model": "m", "input": ["a", "b", "c"]}
    assert embeddings_outcome(three, _embeddings(3)) == "ok:embeddings"
    assert embeddings_outcome({"model": "m", "input": "a"}, _embeddings(1)) == "ok:embeddings"
    assert embeddings_outcome(three, _embeddings(2)) == "bad_body:count"
    assert embeddings_outcome(three, _embeddings(3, dim=383)) == "bad_body:dim"
    assert embeddings_outcome(three, _embeddings(3, usage={})) == "bad_body:usage"
    assert embeddings_outcome(three, b"not json") == "bad_body:json"
    assert embeddings_outcome(three, b'{"error": {"message": "x"}}') == "bad_body:json"
    payload = orjson.loads(_embeddings(3))
    payload["data"][1]["index"] = 2
    assert embeddings_outcome(three, orjson.dumps(payload)) == "bad_body:index"
    payload = orjson.loads(_embeddings(3))
    payload["data"][0]["embedding"] = [0.5] * EMBED_DIM
    assert embeddings_outcome(three, orjson.dumps(payload)) == "bad_body:norm"
    for bad in (None, "x"):
        payload = orjson.loads(_embeddings(3))
        payload["data"][2]["embedding"][7] = bad
        assert embeddings_outcome(three, orjson.dumps(payload)) == "bad_body:value"


def _rerank(results: list[tuple[int, float]], documents: list[str] | None = None) -> bytes:
    rows: list[dict[str, Any]] = [{"index": i, "relevance_score": s} for i, s in results]
    if documents is not None:
        for row in rows:
            row["document"] = {"text": documents[row["index"]]}
    return orjson.dumps({"id": "r", "model": "m", "results": rows, "usage": {"prompt_tokens": 9}})


def test_rerank_outcomes() -> None:
    docs = ["d0", "d1", "d2"]
    body: dict[str, Any] = {"model": "m", "query": "q", "documents": docs}
    good = [(2, 0.9), (0, 0.5), (1, -0.2)]
    assert rerank_outcome(body, _rerank(good, docs)) == "ok:rerank"
    assert rerank_outcome(body, _rerank(good)) == "bad_body:document"  # documents are returned by default
    assert rerank_outcome(body, _rerank([(2, 0.9), (0, 0.5), (1, 0.7)], docs)) == "bad_body:order"
    assert rerank_outcome(body, _rerank([(2, 0.9), (2, 0.5), (1, 0.1)], docs)) == "bad_body:index"
    assert rerank_outcome(body, _rerank([(2, 1.9), (0, 0.5), (1, 0.1)], docs)) == "bad_body:score"
    assert rerank_outcome(body, _rerank(good[:2], docs)) == "bad_body:count"
    swapped = orjson.loads(_rerank(good, docs))
    swapped["results"][0]["document"]["text"] = "d1"
    assert rerank_outcome(body, orjson.dumps(swapped)) == "bad_body:document"
    assert rerank_outcome({**body, "top_n": 2}, _rerank(good[:2], docs)) == "ok:rerank"
    assert rerank_outcome({**body, "top_n": 5}, _rerank(good, docs)) == "ok:rerank"  # past the documents: all
    hidden = {**body, "return_documents": False}
    assert rerank_outcome(hidden, _rerank(good)) == "ok:rerank"
    assert rerank_outcome(hidden, _rerank(good, docs)) == "bad_body:document"
    assert rerank_outcome(body, b"[]") == "bad_body:json"


def test_transcript_and_rejected_outcomes() -> None:
    assert transcript_outcome(b'{"text": "the quick brown fox", "usage": {}}') == "ok:transcript"
    assert transcript_outcome(b'{"text": "  "}') == "bad_body:text"
    assert transcript_outcome(b"the quick brown fox") == "bad_body:json"
    error = {"error": {"message": "input[0] must be a non-empty string", "type": "invalid_request_error"}}
    assert rejected_outcome(orjson.dumps(error)) == "ok:rejected"
    assert rejected_outcome(b'{"error": {"message": "x", "type": "server_error"}}') == "bad_body:error_shape"
    assert rejected_outcome(b"<html>400</html>") == "bad_body:error_shape"


def test_api_outcome_checks_the_status_first() -> None:
    error = orjson.dumps({"error": {"message": "m", "type": "invalid_request_error", "code": None}})
    busy = orjson.dumps({"error": {"message": "m", "type": "server_error", "code": "server_overloaded"}})
    bad, embed = KINDS["embed_bad"], KINDS["embed"]
    assert api_outcome(bad, {"model": "m", "input": ""}, 400, error) == "ok:rejected"
    assert api_outcome(bad, {"model": "m", "input": ""}, 200, _embeddings(1)) == "bad_status:200"
    assert api_outcome(bad, {"model": "m", "input": ""}, 503, busy) == "http_503:server_overloaded"
    body = {"model": "m", "input": ["a", "b"]}
    assert api_outcome(embed, body, 200, _embeddings(2)) == "ok:embeddings"
    assert api_outcome(embed, body, 400, error) == "http_400:invalid_request_error"
    assert api_outcome(KINDS["transcribe"], {"model": "w"}, 200, b'{"text": "fox"}') == "ok:transcript"
    assert (
        api_outcome(KINDS["rerank"], {"model": "m", "query": "q", "documents": ["d"]}, 200, _rerank([(0, 0.3)], ["d"]))
        == "ok:rerank"
    )
    for expected in ("ok:rejected", "ok:embeddings", "ok:rerank", "ok:transcript"):
        assert outcome_class(expected) == "ok" and not unexpected(expected)
    for wrong in ("bad_status:200", "bad_body:count", "bad_body:error_shape", "http_400:early"):
        assert outcome_class(wrong) == "error" and unexpected(wrong)


# --- reading answers ---

CHUNK = b'{"id":"x","choices":[{"index":0,"delta":{"content":" fox"},"logprobs":null,"finish_reason":null}]}'
OPENING = b'{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'
FINISH = b'{"id":"x","choices":[{"index":1,"delta":{},"logprobs":null,"finish_reason":"length"}]}'


def test_sse_chunk_checks() -> None:
    assert finish_reason_of(CHUNK) is None
    assert finish_reason_of(OPENING) is None
    assert finish_reason_of(FINISH) == "length"
    assert has_content(CHUNK)
    assert not has_content(OPENING)
    assert not has_content(FINISH)


def test_error_code() -> None:
    body = orjson.dumps({"error": {"message": "m", "type": "server_error", "code": "upstream_unavailable"}})
    assert error_code(body) == "upstream_unavailable"
    assert error_code(orjson.dumps({"error": {"message": "m", "type": "invalid_request_error", "code": None}})) == (
        "invalid_request_error"
    )
    assert error_code(b"<html>bad gateway</html>") == "not_json"
    assert error_code(b'{"detail": 1}') == "unknown"
    assert error_code(b"[1]") == "unknown"


def test_finish_outcomes() -> None:
    assert finish_outcome(KINDS["long_stream"], ["length"]) == "ok:length"
    assert finish_outcome(KINDS["stop"], ["stop"]) == "ok:stop"
    assert finish_outcome(KINDS["stop"], ["length"]) == "bad_finish:length"
    assert finish_outcome(KINDS["n2"], ["length"]) == "incomplete"
    assert finish_outcome(KINDS["n2"], ["length", "length"]) == "ok:length"
    assert finish_outcome(KINDS["real_stream"], ["stop"]) == "ok:stop"
    assert finish_outcome(KINDS["disconnect"], ["stop", "length"]) == "ok:length+stop"  # no expectation
    assert finish_outcome(KINDS["one_token"], []) == "incomplete"


def test_nonstream_outcomes() -> None:
    kind = KINDS["n2_nonstream"]
    two = {"choices": [{"finish_reason": "length"}, {"finish_reason": "length"}]}
    assert nonstream_outcome(kind, orjson.dumps(two)) == "ok:length"
    assert nonstream_outcome(kind, orjson.dumps({"choices": [{"finish_reason": "length"}]})) == "incomplete"
    assert nonstream_outcome(kind, b"not json") == "bad_body"
    assert nonstream_outcome(kind, b'{"object":"x"}') == "bad_body"


# --- reading the Responses API's answers (written by the gateway's own ResponseEvents) ---

WORDS = (" the", " quick", " brown", " fox")


def _writer(max_output_tokens: int) -> ResponseEvents:
    return ResponseEvents("resp_0123", 1, "synthetic", {"max_output_tokens": max_output_tokens})


def _whole(
    text: str = "".join(WORDS), reason: FinishReason = FinishReason.LENGTH, calls: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any]:
    """A Response object as the gateway writes it: ``text``, then ``calls`` (name, arguments), 4 tokens."""
    output = ChoiceOutput()
    pieces = [ToolCallDelta(i, f"call_{i}", name, arguments) for i, (name, arguments) in enumerate(calls)]
    output.add(Delta(0, text, reason, tool_calls=pieces or None))
    return _writer(4).whole([output], Usage(9, 4))


def _stream(words: tuple[str, ...] = WORDS, reason: FinishReason = FinishReason.LENGTH) -> list[dict[str, Any]]:
    """A response's events as the gateway streams them (one token per word)."""
    writer = _writer(len(words))
    raw = writer.opening(0) + b"".join(writer.delta(0, word) for word in words) + writer.finish(0, reason)
    raw += writer.closing(Usage(9, len(words)), True)
    return [orjson.loads(data) for data in SSEParser().feed(raw)]


def _read(name: str, events: Sequence[dict[str, Any] | bytes]) -> str:
    """The outcome of a stream of ``events`` (dicts or raw payloads), as one_request reads it."""
    reader = stream_reader(KINDS[name])
    for event in events:
        outcome = reader.event(event if isinstance(event, bytes) else orjson.dumps(event))
        if outcome:
            return outcome
    return reader.end()


def test_whole_response_outcomes() -> None:
    assert nonstream_outcome(KINDS["responses"], orjson.dumps(_whole())) == "ok:incomplete"
    assert nonstream_outcome(KINDS["responses"], b"not json") == "bad_body:json"
    error = {"error": {"message": "m", "type": "server_error", "code": "upstream_error"}}
    assert nonstream_outcome(KINDS["responses"], orjson.dumps(error)) == "bad_body:json"
    kind = KINDS["responses"]
    assert response_outcome(kind, _whole(reason=FinishReason.STOP)) == "bad_finish:completed"  # synthetic: cut
    assert response_outcome(KINDS["responses_disconnect"], _whole(reason=FinishReason.STOP)) == "ok:completed"
    assert response_outcome(kind, {**_whole(), "incomplete_details": None}) == "bad_body:incomplete_details"
    assert response_outcome(kind, {**_whole(), "max_output_tokens": 32}) == "bad_body:usage"  # not cut at its limit
    assert response_outcome(kind, {**_whole(), "usage": None}) == "bad_body:usage"
    assert response_outcome(kind, {**_whole(), "output": []}) == "bad_body:output"
    odd = _whole()
    odd["output"].append({"type": "reasoning", "summary": []})
    assert response_outcome(kind, odd) == "bad_body:output"
    assert response_outcome(kind, _whole(text="")) == "bad_body:text"  # the synthetic model always says something
    assert response_outcome(kind, {**_whole(), "object": "chat.completion"}) == "bad_body:json"


def test_function_call_response_outcomes() -> None:
    kind = KINDS["real_responses_tools"]
    paris = ("get_weather", '{"city": "Paris"}')
    called = _whole("", FinishReason.TOOL_CALLS, (paris,))
    assert [item["type"] for item in called["output"]] == ["function_call"]
    assert response_outcome(kind, called) == "ok:function_call"
    assert response_outcome(kind, _whole("", FinishReason.LENGTH, (("get_weather", '{"ci'),))) == "ok:incomplete"
    assert response_outcome(kind, _whole("", FinishReason.LENGTH)) == "ok:incomplete"  # cut before the call
    assert response_outcome(kind, _whole("Paris", FinishReason.STOP)) == "bad_finish:completed"  # required: no call
    assert response_outcome(kind, _whole("", FinishReason.TOOL_CALLS, (("get_time", "{}"),))) == "bad_body:call"
    assert response_outcome(kind, _whole("", FinishReason.TOOL_CALLS, (("get_weather", "Paris"),))) == "bad_body:call"
    for outcome in ("ok:function_call", "ok:incomplete"):
        assert not unexpected(outcome)


def test_responses_stream_outcomes() -> None:
    events = _stream()
    assert [e["type"] for e in events[:4]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert events[-1]["type"] == "response.incomplete"
    assert _read("responses_stream", events) == "ok:incomplete"
    assert _read("responses_disconnect", _stream(reason=FinishReason.STOP)) == "ok:completed"
    assert _read("responses_stream", _stream(reason=FinishReason.STOP)) == "bad_finish:completed"
    assert _read("responses_stream", events[1:]) == "bad_event:first"
    assert _read("responses_stream", events[:5] + events[6:]) == "bad_event:sequence"  # a delta lost
    assert _read("responses_stream", events[:-1]) == "truncated"  # no closing event
    assert _read("responses_stream", [*events, events[-1]]) == "bad_event:after_end"
    assert _read("responses_stream", [b"not json"]) == "bad_event:json"
    empty = [dict(e) for e in events]
    empty[5]["delta"] = ""
    assert _read("responses_stream", empty) == "bad_event:delta"
    changed = [dict(e) for e in events]
    changed[5]["delta"] = " cat"
    assert _read("responses_stream", changed) == "bad_event:text"  # the deltas are not the response's text
    mislabelled = [*events[:-1], {**events[-1], "type": "response.completed"}]
    assert _read("responses_stream", mislabelled) == "bad_event:status"
    broken = dict(events[-1])
    broken["response"] = {**broken["response"], "incomplete_details": None}
    assert _read("responses_stream", [*events[:-1], broken]) == "bad_body:incomplete_details"


def test_responses_stream_errors_and_text() -> None:
    writer = _writer(64)
    raw = writer.opening(0) + writer.delta(0, " the") + writer.failure(UpstreamUnavailable("Triton went away"))
    events = SSEParser().feed(raw)
    assert _read("responses_stream", events) == "sse_error:upstream_unavailable"  # the error event, first
    failed = orjson.loads(events[-1]) | {"sequence_number": len(events) - 2}
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert _read("responses_stream", [*events[:-2], failed]) == "bad_event:failed"  # no error event before it
    reader = stream_reader(KINDS["responses_stream"])
    for data in SSEParser().feed(_writer(64).opening(0)):
        assert reader.event(data) == "" and not reader.text  # no TTFT before the first delta
    assert reader.event(orjson.dumps(_stream()[4] | {"sequence_number": 2})) == "" and reader.text


def test_chat_stream_reader() -> None:
    assert _read("one_token", [OPENING, CHUNK, FINISH.replace(b'"index":1', b'"index":0'), b"[DONE]"]) == "ok:length"
    assert _read("n2", [CHUNK, FINISH, b"[DONE]"]) == "incomplete"
    assert _read("one_token", [CHUNK, FINISH]) == "truncated"
    error = b'{"error":{"message":"m","type":"server_error","code":"upstream_error"}}'
    assert _read("one_token", [CHUNK, error]) == "sse_error:upstream_error"
    reader = stream_reader(KINDS["one_token"])
    assert reader.event(OPENING) == "" and not reader.text
    assert reader.event(CHUNK) == "" and reader.text


def test_outcome_classes_and_gate() -> None:
    assert outcome_class("ok:length") == "ok"
    assert outcome_class("disconnect") == "disconnect"
    assert outcome_class("hung") == "hung"
    for bad in ("http_503:upstream_unavailable", "sse_error:internal_error", "conn:ServerDisconnectedError"):
        assert outcome_class(bad) == "error"
        assert unexpected(bad)
    assert not unexpected("ok:stop") and not unexpected("disconnect")
    assert unexpected("hung") and unexpected("truncated") and unexpected("bad_finish:stop")
    assert not unexpected("http_503:server_overloaded", ["http_503:server_overloaded"])
    assert not unexpected("http_429:rate_limited", ["http_429"])
    assert unexpected("http_503:upstream_unavailable", ["http_503:server_overloaded"])


# --- aggregation ---


def _records() -> list[Record]:
    return [
        Record("one_token", 0.0, 0.03, "ok:length", 0.025),
        Record("one_token", 0.5, 0.54, "ok:length", 0.035),
        Record("long_stream", 0.1, 1.4, "ok:length", 0.03),
        Record("disconnect", 1.0, 1.05, "disconnect", 0.03),
        Record("nonstream", 2.0, 2.2, "ok:length"),
        Record("stop", 2.5, 2.6, "http_503:upstream_unavailable"),
        Record("stop", 3.0, 3.1, "sse_error:upstream_error"),
        Record("n2", 3.5, 123.5, "hung"),
    ]


def test_summarize() -> None:
    s = summarize(_records(), window=4.0)
    assert s["requests"] == 8
    assert s["requests_per_s"] == 2.0
    assert s["ok_per_s"] == 1.0
    assert s["classes"] == {"ok": 4, "disconnect": 1, "error": 2, "hung": 1}
    assert s["outcomes"]["ok:length"] == 4
    assert s["unexpected"] == 3
    assert set(s["unexpected_outcomes"]) == {"http_503:upstream_unavailable", "sse_error:upstream_error", "hung"}
    one = s["kinds"]["one_token"]
    assert one["requests"] == 2
    assert one["e2e_ms"]["max"] == pytest.approx(40.0)
    assert one["ttft_ms"]["p50"] == pytest.approx(30.0)
    assert math.isnan(s["kinds"]["nonstream"]["ttft_ms"]["p50"])  # no TTFT without a stream
    assert math.isnan(s["kinds"]["stop"]["e2e_ms"]["p50"])  # latency over ok requests only
    assert s["kinds"]["disconnect"]["disconnect_after_ms"]["p50"] == pytest.approx(50.0)
    allowed = summarize(_records(), 4.0, ["http_503", "sse_error"])
    assert allowed["unexpected"] == 1


def test_summarize_empty() -> None:
    s = summarize([], window=0.0)
    assert s["requests"] == 0 and s["unexpected"] == 0 and math.isnan(s["requests_per_s"])


def test_timeline_buckets_by_end_time() -> None:
    buckets = timeline(_records(), bucket=2.0, window=4.0)
    assert [b["t"] for b in buckets] == [2.0, 4.0]
    assert buckets[0]["ok"] == 1.5  # three ok requests ended in [0, 2) s: 1.5/s
    assert buckets[0]["disconnect"] == 0.5
    assert buckets[1]["error"] == 1.0
    assert buckets[1]["hung"] == 0.5  # ended past the window: counted in the last bucket
    short = timeline(_records(), bucket=2.0, window=3.0)
    assert [b["t"] for b in short] == [2.0, 3.0]
    assert short[1]["error"] == 2.0  # two errors in the last, 1 s long slice


def test_triton_changes() -> None:
    assert triton_changes([10, 10, 10]) == {"pids": [10], "restarts": 0, "down_samples": 0, "down_at_end": False}
    restarted = triton_changes([10, 10, None, None, 11, 11])
    assert restarted["restarts"] == 1 and restarted["down_samples"] == 2 and restarted["pids"] == [10, 11]
    assert triton_changes([10, 12])["restarts"] == 1  # restarted between two samples
    dead = triton_changes([10, None, None])
    assert dead["restarts"] == 0 and dead["down_samples"] == 2 and dead["down_at_end"]
    assert triton_changes([None, None])["down_samples"] == 0  # never seen (not our child): unknown, not down
    assert triton_changes([])["pids"] == []


def _sample(t: float, rss: int | None, fds: int | None, pid: int | None, cpu: float | None = None) -> Sample:
    return Sample(t, rss, fds, cpu, pid, 200_000 if pid else None)


def test_resources() -> None:
    samples = [
        _sample(0, 100_000, 30, 10, 1.0),
        _sample(2, 120_000, 45, 10, 2.0),
        _sample(4, None, None, None),
        _sample(6, 110_000, 40, 11, 4.0),
    ]
    samples[-1].log_restarts = 1
    res = resources(samples, warm_t=1.0)
    assert res["gateway_rss_kb"] == {
        "start": 100_000,
        "warm": 120_000,
        "end": 110_000,
        "growth": -10_000,
        "min": 100_000,
        "max": 120_000,
    }
    assert res["gateway_fds"]["max"] == 45
    assert res["gateway_cpu_cores"] == pytest.approx(0.5)
    assert res["triton"]["restarts"] == 1
    assert res["log_restarts"] == 1
    empty = resources([])
    assert empty["gateway_rss_kb"]["start"] is None and empty["gateway_cpu_cores"] is None
    assert empty["gateway_rss_kb"]["growth"] is None


def test_parse_metric() -> None:
    text = (
        "# HELP gateway_triton_restarts_total Triton restarts\n"
        "# TYPE gateway_triton_restarts_total counter\n"
        "gateway_triton_restarts_total 2.0\n"
        "gateway_triton_restarts_created 1.7e9\n"
        'gateway_requests_in_flight{model="synthetic"} 1.0\n'
        'gateway_requests_in_flight{model="smollm2-135m-instruct"} 2.0\n'
        'gateway_requests_in_flight_other{model="x"} 5.0\n'
    )
    assert parse_metric(text, "gateway_triton_restarts_total") == 2.0
    assert parse_metric(text, "gateway_requests_in_flight") == 3.0
    assert parse_metric(text, "gateway_client_disconnects_total") is None
    assert parse_metric("", "gateway_requests_in_flight") is None


# --- the gate and the printed summary ---


def _result(**overrides: Any) -> dict[str, Any]:
    records = [r for r in _records() if r.outcome in ("ok:length", "disconnect")]
    result: dict[str, Any] = {
        "config": {"concurrency": 8},
        "summary": summarize(records, 4.0),
        "resources": resources([_sample(0, 100_000, 30, 10, 1.0), _sample(4, 101_000, 30, 10, 2.0)]),
        "metrics": {"gateway_requests_in_flight": 0.0, "gateway_triton_restarts_total": None},
        "final_checks": {"/health": {"ok": True}, "/ready": {"ok": True}, "synthetic": {"ok": True}},
        "gateway_exited": False,
    }
    result.update(overrides)
    return result


def test_a_clean_run_passes() -> None:
    result = _result()
    assert failures(result) == []
    result["failures"] = []
    text = format_summary(result)
    assert "PASS" in text and "one_token" in text and "98.6 MB at end" in text


def test_gate_failures() -> None:
    assert any("unexpected" in f for f in failures(_result(summary=summarize(_records(), 4.0))))
    down = resources([_sample(0, 1, 1, 10), _sample(2, 1, 1, None), _sample(4, 1, 1, 11)])
    reasons = failures(_result(resources=down))
    assert any("restarted 1" in f for f in reasons) and any("gone in 1" in f for f in reasons)
    logged = resources([_sample(0, 1, 1, 10)])
    logged["log_restarts"] = 2
    assert any("exited unexpectedly" in f for f in failures(_result(resources=logged)))
    assert failures(_result(metrics={"gateway_triton_restarts_total": 1.0}))
    assert failures(_result(metrics={"gateway_requests_in_flight": 3.0}))
    assert failures(_result(final_checks={"/ready": {"ok": False, "detail": "HTTP 503"}}))
    assert failures(_result(gateway_exited=True))
    assert failures(_result(summary=summarize([], 1.0)))
    result = _result(gateway_exited=True)
    result["failures"] = failures(result)
    assert "FAIL" in format_summary(result)


def test_progress_line() -> None:
    line = progress_line(30.0, 900, 30.0, 31.5, 2, 1, _sample(30, 150 * 1024, 42, 1234))
    assert "900 req" in line and "30.0 req/s" in line and "errors 2" in line and "hung 1" in line
    assert "150.0 MB" in line and "fds 42" in line and "tritonserver 1234" in line
    assert "tritonserver gone" in progress_line(1.0, 0, 0.0, 0.0, 0, 0, _sample(1, None, None, None))


# --- the deployment cycler (perf/churn_deployments.py) ---


def test_deployment_cycles_flag() -> None:
    assert not parse_args([]).deployment_cycles
    assert parse_args(["--launch", "--deployment-cycles"]).deployment_cycles


def test_deployment_bodies_are_valid_and_let_the_streams_in() -> None:
    rng = random.Random(3)
    seen_acls, seen_limits = set(), set()
    for n in range(200):
        streams = rng.randint(2, 4)
        body = deployment_body(f"churn-dep-x-{n}", streams, rng)
        parsed = DeploymentCreate.model_validate(body)  # the gateway's own schema accepts it
        assert parsed.model == TRITON_MODEL and parsed.name == f"churn-dep-x-{n}" and "churn" in parsed.tags
        limit = parsed.limits.max_in_flight
        assert limit is None or limit >= streams  # its queue is 0: fewer slots would refuse a stream
        here = ipaddress.ip_address("127.0.0.1")
        assert not parsed.acls or any(here in ipaddress.ip_network(a.ip) for a in parsed.acls)
        seen_acls.add(len(parsed.acls))
        seen_limits.add(limit is None)
    assert seen_acls == {0, 1, 2} and seen_limits == {True, False}


@pytest.mark.parametrize(
    ("outcome", "failure"),
    [
        ("ok:length", None),
        ("ok:stop", "stream_bad_finish"),
        ("bad_finish:stop", "stream_bad_finish"),
        ("sse_error:upstream_unavailable", "stream_error"),
        ("truncated", "stream_cut"),
        ("incomplete", "stream_cut"),
        ("conn:ClientPayloadError", "stream_cut"),
        ("hung", "stream_hung"),
        ("http_404:model_not_found", "stream_refused"),
    ],
)
def test_stream_failure(outcome: str, failure: str | None) -> None:
    assert stream_failure(outcome) == failure


def test_a_cycle_streams_like_the_synthetic_kinds() -> None:
    body = request_body(STREAM, "churn-dep-x-1", 8)
    assert body["model"] == "churn-dep-x-1" and body["stream"] and body["max_tokens"] == 100
    reader = stream_reader(STREAM)
    events = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": " the"}),
        _chunk({}, "length"),
        b"[DONE]",
    ]
    outcomes = [reader.event(e) for e in events]
    assert reader.text and stream_failure(outcomes[-1]) is None
    cut = stream_reader(STREAM)
    cut.event(_chunk({"content": " the"}))
    assert stream_failure(cut.end()) == "stream_cut"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return orjson.dumps(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    )


def test_cycle_outcomes_and_summary() -> None:
    assert cycle_outcome([]) == "ok:cycle"
    assert cycle_outcome(["stream_cut", "not_gone", "stream_cut"]) == "deployment:not_gone+stream_cut"
    assert not unexpected(cycle_outcome([]))
    assert unexpected("deployment:not_404_after_delete")
    assert not unexpected("deployment:not_gone", ["deployment:not_gone"])
    ok = Cycle(1, "a-1", 0.0, 1.0, streams=3, streams_ok=3, live_at_delete=3, ready_s=0.01, gone_s=0.5)
    bad = Cycle(2, "a-2", 1.0, 40.0, streams=2, streams_ok=1, live_at_delete=2, ready_s=0.02)
    bad.fail("stream_cut", "truncated")
    bad.fail("not_gone", "still there")
    create = Cycle(3, "a-3", 40.0, 40.1)
    create.fail("create_failed", "POST /admin/v1/deployments: HTTP 500 internal_error")
    s = summarize_cycles([ok, bad, create], left_over=1)
    assert s["counts"] == {"cycles": 3, "cycle_ok": 1, "create_failed": 1, "stream_cut": 1, "not_gone": 1}
    assert (s["streams"], s["streams_ok"], s["live_at_delete"], s["left_over"]) == (5, 4, 5, 1)
    assert s["ready_ms"]["max"] == pytest.approx(20.0) and s["gone_ms"]["p50"] == pytest.approx(500.0)
    assert [c["n"] for c in s["failed_cycles"]] == [2, 3]
    assert s["failed_cycles"][0]["details"] == ["stream_cut: truncated", "not_gone: still there"]
    # in the run's records, a failed cycle is an unexpected outcome of its own kind: the gate fails
    records = [Record(KIND, c.start, c.end, cycle_outcome(c.failures)) for c in (ok, bad, create)]
    summary = summarize(records, 40.0)
    assert summary["unexpected"] == 2 and summary["kinds"][KIND]["requests"] == 3
    result = _result(summary=summary, deployments=s)
    reasons = failures(result)
    assert any("deployment:not_gone+stream_cut x1" in f for f in reasons)
    assert any("1 deployment(s) of the cycler still listed" in f for f in reasons)
    result["failures"] = reasons
    text = format_summary(result)
    assert "deployment cycles: 3 (ok 1); failures: create_failed 1, stream_cut 1, not_gone 1" in text
    assert "cycle 2 (a-2, t=1s): stream_cut: truncated; not_gone: still there" in text


def test_a_clean_cycler_passes_and_an_idle_one_fails() -> None:
    clean = summarize_cycles([Cycle(1, "a-1", 0.0, 1.0, streams=2, streams_ok=2, ready_s=0.01, gone_s=0.3)], 0)
    result = _result(deployments=clean)
    assert failures(result) == []
    result["failures"] = []
    assert "deployment cycles: 1 (ok 1); failures: none" in format_summary(result)
    assert "deployment cycles" not in format_summary({**_result(), "failures": []})
    idle = failures(_result(deployments=summarize_cycles([], None)))
    assert idle == ["the deployment cycler completed no cycle"]
