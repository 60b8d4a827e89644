"""Our gRPC API's wire types to and from the internal types, with OpenAI's value checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import Message
from numpy.typing import NDArray

from gateway.audio.formats import usage as audio_usage
from gateway.audio.transcript import Segment, Transcription
from gateway.core.limits import (
    LOGIT_BIAS_RANGE,
    MAX_CHOICES,
    MAX_DOCUMENTS,
    MAX_EMBEDDING_INPUTS,
    MAX_STOP_STRINGS,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    PENALTY_RANGE,
    TEMPERATURE_RANGE,
)
from gateway.core.plan import OutputShape, Prompt, checked_shape
from gateway.core.transcribe import TranscribeOptions
from gateway.core.types import FinishReason, SamplingInput, TokenLogprob, Tool, ToolCall, ToolChoice, Usage
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.grpcapi.stubs import pb

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
_MODES = {
    pb.ToolChoice.MODE_NONE: "none",
    pb.ToolChoice.MODE_AUTO: "auto",
    pb.ToolChoice.MODE_REQUIRED: "required",
    pb.ToolChoice.MODE_NAMED: "named",
}


def _in(value: float, bounds: tuple[float, float], param: str) -> float:
    if not bounds[0] <= value <= bounds[1]:
        raise InvalidRequest(f"Invalid value for '{param}': must be in [{bounds[0]}, {bounds[1]}]", param=param)
    return value


def sampling_input(s: pb.SamplingParams) -> SamplingInput:
    stop = tuple(s.stop)
    if len(stop) > MAX_STOP_STRINGS or any(not x for x in stop):
        raise InvalidRequest(f"'stop' takes at most {MAX_STOP_STRINGS} non-empty strings", param="sampling.stop")
    if s.HasField("max_tokens") and s.max_tokens < 1:
        raise InvalidRequest("Invalid value for 'max_tokens': must be at least 1", param="sampling.max_tokens")
    if s.HasField("top_p") and not 0.0 < s.top_p <= 1.0:
        raise InvalidRequest("Invalid value for 'top_p': must be in (0, 1]", param="sampling.top_p")
    if s.HasField("repetition_penalty") and not 0.0 < s.repetition_penalty <= 2.0:
        raise InvalidRequest(
            "Invalid value for 'repetition_penalty': must be in (0, 2]", param="sampling.repetition_penalty"
        )
    for bias in s.logit_bias.values():
        _in(bias, LOGIT_BIAS_RANGE, "sampling.logit_bias")
    if s.top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidRequest(
            f"Invalid value for 'top_logprobs': at most {MAX_TOP_LOGPROBS}", param="sampling.top_logprobs"
        )
    if s.top_logprobs and not s.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true", param="sampling.top_logprobs")
    return SamplingInput(
        max_tokens=s.max_tokens if s.HasField("max_tokens") else None,
        max_tokens_param="sampling.max_tokens",
        temperature=_in(s.temperature, TEMPERATURE_RANGE, "sampling.temperature")
        if s.HasField("temperature")
        else None,
        top_p=s.top_p if s.HasField("top_p") else None,
        top_k=s.top_k if s.HasField("top_k") else None,
        seed=s.seed if s.HasField("seed") else None,
        min_tokens=s.min_tokens,
        ignore_eos=s.ignore_eos,
        stop=stop,
        presence_penalty=_in(s.presence_penalty, PENALTY_RANGE, "sampling.presence_penalty")
        if s.HasField("presence_penalty")
        else None,
        frequency_penalty=_in(s.frequency_penalty, PENALTY_RANGE, "sampling.frequency_penalty")
        if s.HasField("frequency_penalty")
        else None,
        repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else None,
        logit_bias=tuple(sorted(s.logit_bias.items())),
        stop_token_ids=tuple(s.stop_token_ids),
        logprobs=s.logprobs,
        top_logprobs=s.top_logprobs,
        logprobs_param="sampling.top_logprobs" if s.top_logprobs else "sampling.logprobs",
    )


def choices_count(n: int) -> int:
    if n > MAX_CHOICES:
        raise InvalidRequest(f"Invalid value for 'n': at most {MAX_CHOICES}", param="n")
    return n or 1


def messages(items: Iterable[pb.ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(items):
        if m.role not in ROLES:
            raise InvalidRequest(f"Invalid value for 'messages.{i}.role': {m.role!r}", param=f"messages.{i}.role")
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    if not out:
        raise InvalidRequest("'messages' must contain at least one message", param="messages")
    return out


def _json(text: str, param: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid value for '{param}': not JSON ({exc})", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"Invalid value for '{param}': must be a JSON object", param=param)
    return value


def response_format(rf: pb.ResponseFormat) -> dict[str, Any] | None:
    kind = rf.WhichOneof("format")
    if kind == "json_object" and rf.json_object:
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = rf.json_schema
        schema = _json(spec.schema_json, "response_format.json_schema.schema_json") if spec.schema_json else {}
        return {
            "type": "json_schema",
            "json_schema": {"name": spec.name or "output", "schema": schema, "strict": spec.strict},
        }
    return None


def output_shape(request: pb.ChatCompletionRequest) -> OutputShape:
    if len(request.tools) > MAX_TOOLS:
        raise InvalidRequest(f"'tools' takes at most {MAX_TOOLS} functions", param="tools")
    tools = tuple(
        Tool(t.name, t.description, _json(t.parameters_json, f"tools.{i}.parameters_json") if t.parameters_json else {})
        for i, t in enumerate(request.tools)
    )
    if any(not t.name for t in tools):
        raise InvalidRequest("'tools' must name each function", param="tools")
    given = request.tool_choice
    mode = _MODES.get(given.mode)
    choice = None if mode is None else ToolChoice(mode, given.name if mode == "named" else None)  # type: ignore[arg-type]
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
    return checked_shape(response_format(request.response_format), tools, choice, parallel)


def logprobs(tokens: list[TokenLogprob] | None, piece: Callable[[int], tuple[str, bytes]]) -> list[pb.TokenLogprob]:
    out = []
    for token in tokens or ():
        text, raw = piece(token.id)
        top = []
        for alt, value in token.top:
            alt_text, alt_raw = piece(alt)
            top.append(pb.TokenLogprob(id=alt, token=alt_text, bytes=alt_raw, logprob=value))
        out.append(pb.TokenLogprob(id=token.id, token=text, bytes=raw, logprob=token.logprob, top=top))
    return out


def tool_calls(calls: list[ToolCall]) -> list[pb.ToolCall]:
    return [pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls]


def prompt(request: pb.CompletionRequest) -> list[Prompt]:
    kind = request.WhichOneof("prompt")
    if kind == "text":
        return [request.text]
    if kind == "token_ids":
        return [list(request.token_ids.ids)]
    raise InvalidRequest("Missing required parameter: 'prompt' (text or token_ids)", param="prompt")


def usage(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens)


# ------------------------------------------------------------------ encoders and transcription


def _sized(items: Sequence[object], most: int, param: str) -> None:
    if not 1 <= len(items) <= most:
        raise InvalidRequest(f"Invalid value for '{param}': give 1 to {most} items, not {len(items)}", param=param)


def at_least_one(request: Message, field: str) -> int | None:
    """An ``optional uint32`` field: None when unset, a 400 naming it when 0."""
    if not request.HasField(field):
        return None
    value: int = getattr(request, field)
    if value < 1:
        raise InvalidRequest(f"Invalid value for '{field}': must be at least 1", param=field)
    return value


def embed_inputs(request: pb.EmbedRequest) -> list[str] | list[list[int]]:
    """The texts or token id rows of an Embed request, named ``input`` in errors as REST names them;
    the core checks each row of ids against the vocabulary."""
    kind = request.WhichOneof("input")
    if kind == "texts":
        texts = list(request.texts.texts)
        _sized(texts, MAX_EMBEDDING_INPUTS, "input")
        empty = next((i for i, text in enumerate(texts) if not text), None)
        if empty is not None:
            raise InvalidRequest(f"input[{empty}] must not be empty", param="input")
        return texts
    if kind == "token_ids":
        rows = [list(row.ids) for row in request.token_ids.token_ids]
        _sized(rows, MAX_EMBEDDING_INPUTS, "input")
        return rows
    raise InvalidRequest("Missing required parameter: 'input' (texts or token_ids)", param="input")


def embeddings(vectors: NDArray[np.float32]) -> list[pb.Embedding]:
    return [pb.Embedding(values=row) for row in vectors.tolist()]


def encoder_usage(prompt_tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)


def rerank_documents(request: pb.RerankRequest) -> list[str]:
    if not request.query:
        raise InvalidRequest("Missing required parameter: 'query'", param="query")
    documents = list(request.documents)
    _sized(documents, MAX_DOCUMENTS, "documents")
    return documents


def score_texts(request: pb.ScoreRequest) -> tuple[list[str], list[str]]:
    left, right = list(request.text_1), list(request.text_2)
    _sized(left, MAX_DOCUMENTS, "text_1")
    _sized(right, MAX_DOCUMENTS, "text_2")
    return left, right


def audio(request: pb.TranscribeRequest, max_bytes: int) -> bytes:
    """The request's audio (read once: each read of a bytes field copies it), within the size limit."""
    data = request.audio
    if not data:
        raise InvalidRequest("Missing required parameter: 'audio'", param="audio")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"The audio of {len(data)} bytes exceeds the limit of {max_bytes} bytes", param="audio")
    return data


def transcribe_options(request: pb.TranscribeRequest) -> TranscribeOptions:
    return TranscribeOptions(
        language=request.language or None,
        prompt=request.prompt or None,
        temperature=request.temperature if request.HasField("temperature") else None,
        timestamps=True if request.timestamps else None,
    )


def segment_event(segment: Segment) -> pb.TranscribeEvent:
    return pb.TranscribeEvent(
        segment=pb.TranscriptSegment(id=segment.id, start=segment.start, end=segment.end, text=segment.text)
    )


def done_event(transcription: Transcription) -> pb.TranscribeEvent:
    return pb.TranscribeEvent(
        done=pb.TranscriptionDone(
            text=transcription.text,
            language=transcription.language or "",
            duration=transcription.duration,
            usage=pb.AudioUsage(seconds=audio_usage(transcription.duration)["seconds"]),
        )
    )
