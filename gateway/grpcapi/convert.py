"""Our gRPC API's wire types to and from the internal types, with OpenAI's value checks."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.core.limits import MAX_CHOICES, MAX_STOP_STRINGS, PENALTY_RANGE, TEMPERATURE_RANGE
from gateway.core.plan import Prompt
from gateway.core.types import FinishReason, SamplingInput, Usage
from gateway.errors import InvalidRequest
from gateway.grpcapi.stubs import pb

ROLES = frozenset({"system", "developer", "user", "assistant"})
FINISH = {FinishReason.STOP: pb.FINISH_REASON_STOP, FinishReason.LENGTH: pb.FINISH_REASON_LENGTH}


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
    )


def choices_count(n: int) -> int:
    if n > MAX_CHOICES:
        raise InvalidRequest(f"Invalid value for 'n': at most {MAX_CHOICES}", param="n")
    return n or 1


def messages(items: Iterable[pb.ChatMessage]) -> list[dict[str, str]]:
    out = [{"role": m.role, "content": m.content} for m in items]
    if not out:
        raise InvalidRequest("'messages' must contain at least one message", param="messages")
    for i, m in enumerate(out):
        if m["role"] not in ROLES:
            raise InvalidRequest(f"Invalid value for 'messages.{i}.role': {m['role']!r}", param=f"messages.{i}.role")
    return out


def prompt(request: pb.CompletionRequest) -> list[Prompt]:
    kind = request.WhichOneof("prompt")
    if kind == "text":
        return [request.text]
    if kind == "token_ids":
        return [list(request.token_ids.ids)]
    raise InvalidRequest("Missing required parameter: 'prompt' (text or token_ids)", param="prompt")


def usage(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens)
