"""From what a client asked (any API) to what to generate: the model, choices and sampling.

REST and gRPC both call these, so template rendering, tokenization, prompt checks, seeds per
choice and the model's limits are written once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.keys import Principal
from gateway.core.halt import Halt
from gateway.core.ids import random_hex
from gateway.core.models import ModelRegistry, ServedModel
from gateway.core.sampling import resolve_sampling
from gateway.core.types import Choice, Guide, RequestStats, SamplingInput, SamplingParams, Tool, ToolChoice
from gateway.errors import ContextLengthExceeded, InvalidRequest, UnsupportedParameter
from gateway.limits.ratelimit import Grant, RateLimiter
from gateway.observability.metrics import OVERHEAD, child
from gateway.text.guides import response_format_guide, tool_guide
from gateway.text.tokenizer import content_chars
from gateway.text.tool_prompt import prepare_messages

# OpenAI's legacy completions API generates 16 tokens when max_tokens is not given
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

Prompt = str | list[int]
GENERATE = ("generate",)


@dataclass(slots=True)
class Plan:
    model: ServedModel
    request_id: str
    choices: list[Choice]
    sampling: SamplingParams
    prompt_tokens: int  # all prompts, each counted once (not once per choice)
    stats: RequestStats
    project: str
    echo: list[str] | None = None  # per choice: the prompt text to prepend (completions' echo)
    grant: Grant | None = None  # the rate limiter's admission, settled when generation ends
    halt: Halt = field(default_factory=Halt)  # triggered when the client goes away: stop the models in-band
    tool_format: str | None = None  # the model's tool-call format, when the output is parsed for calls


@dataclass(frozen=True, slots=True)
class OutputShape:
    """What a client asked of the output's shape: a response format, or tools to call."""

    response_format: dict[str, Any] | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    format_param: str = "response_format"  # the request's name for ``response_format`` (in errors)

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice.mode != "none"


def checked_shape(
    response_format: dict[str, Any] | None,
    tools: tuple[Tool, ...],
    choice: ToolChoice | None,
    parallel: bool,
    format_param: str = "response_format",
) -> OutputShape:
    """The shape a request asked for, with OpenAI's rules across its fields checked (REST and gRPC
    alike). ``choice`` None: ``auto`` when there are tools, ``none`` when there are none."""
    if len({t.name for t in tools}) != len(tools):
        raise InvalidRequest("'tools' lists a function name twice", param="tools")
    if choice is None:
        choice = ToolChoice("auto" if tools else "none")
    elif choice.mode != "none" and not tools:
        raise InvalidRequest("'tool_choice' is only allowed when 'tools' are given", param="tool_choice")
    elif choice.mode == "named" and all(t.name != choice.name for t in tools):
        raise InvalidRequest(
            f"'tool_choice' names a function that is not in 'tools': {choice.name!r}", param="tool_choice"
        )
    return OutputShape(response_format, tools, choice, parallel, format_param)


def new_id(prefix: str) -> str:
    return f"{prefix}-{random_hex(12)}"


def _choices(prompts: list[list[int]], n: int, seed: int | None) -> list[Choice]:
    """Choice i of each prompt samples with ``seed + i``: n seeded choices differ, yet reproduce."""
    return [
        Choice(index=p * n + i, prompt_ids=ids, seed=None if seed is None else seed + i)
        for p, ids in enumerate(prompts)
        for i in range(n)
    ]


async def plan_chat(
    principal: Principal,
    registry: ModelRegistry,
    model_id: str,
    messages: list[dict[str, Any]],
    n: int,
    given: SamplingInput,
    limiter: RateLimiter | None = None,
    started: float | None = None,
    shape: OutputShape | None = None,
    prompt_param: str = "messages",
) -> Plan:
    stats = RequestStats(started or time.monotonic())
    model = registry.get(model_id, principal, GENERATE)
    tokenizer = model.tokenizer
    _check_length(model, content_chars(messages), prompt_param)
    contract = await model.contract()
    shape = shape or OutputShape()
    guide = _response_guide(shape.response_format, shape.format_param)
    tool_format: str | None = None
    tools: list[dict[str, Any]] | None = None
    with_tools = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if shape.calls_tools or with_tools:
        tool_format = model.config.tool_parser or ("hermes" if tokenizer.supports_tools else "generic")
        native = tokenizer.supports_tools and tool_format != "generic"
        messages = prepare_messages(messages, list(shape.tools), tool_format, native)
        if native and shape.tools:
            tools = [_tool_dict(t) for t in shape.tools]
    if shape.calls_tools:
        if guide is not None:
            raise InvalidRequest(f"'{shape.format_param}' cannot be combined with 'tools'", param=shape.format_param)
        guide = _tool_guide(model, contract.guided_decoding_backend, shape, tool_format or "generic")
    else:
        tool_format = None  # tools in the history, none to call now: the output is text
    prefill = guide.prefill if guide is not None else ""
    prompt_ids = await tokenizer.encode_chat(messages, tools, prefill)
    sampling = resolve_sampling(
        model,
        contract,
        given,
        prompt_tokens=len(prompt_ids),
        default_max_tokens=model.config.default_max_tokens,
        prompt_param=prompt_param,
        guide=guide,
        guide_param="tool_choice" if shape.calls_tools else shape.format_param,
    )
    choices = _choices([prompt_ids], n, given.seed)
    plan = Plan(model, new_id("chatcmpl"), choices, sampling, len(prompt_ids), stats, principal.project)
    plan.tool_format = tool_format
    return await _planned(plan, principal, limiter)


def _response_guide(response_format: dict[str, Any] | None, param: str = "response_format") -> Guide | None:
    if response_format is None:
        return None
    try:
        return response_format_guide(response_format)  # the schema is checked to compile (400 if not)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid '{param}': {exc}", param=param) from None


def _tool_guide(model: ServedModel, backend: str | None, shape: OutputShape, tool_format: str) -> Guide | None:
    """The grammar that holds the output to the tool choice; ``auto`` goes unconstrained without one."""
    mode = shape.tool_choice.mode
    if backend is None:
        if mode in ("required", "named"):
            raise UnsupportedParameter(
                f"'tool_choice' {mode!r} needs guided decoding, which model '{model.id}' does not have",
                param="tool_choice",
            )
        return None
    try:
        return tool_guide(list(shape.tools), shape.tool_choice, shape.parallel_tool_calls, tool_format, backend)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid 'tools': {exc}", param="tools") from None


def _tool_dict(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters) or {"type": "object"}}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


async def plan_completion(
    principal: Principal,
    registry: ModelRegistry,
    model_id: str,
    prompts: list[Prompt],
    n: int,
    echo: bool,
    given: SamplingInput,
    limiter: RateLimiter | None = None,
    started: float | None = None,
    response_format: dict[str, Any] | None = None,
) -> Plan:
    stats = RequestStats(started or time.monotonic())
    model = registry.get(model_id, principal, GENERATE)
    tokenizer = model.tokenizer
    vocab = tokenizer.vocab_size
    guide = _response_guide(response_format)
    ids_list: list[list[int]] = []
    for prompt in prompts:
        if isinstance(prompt, str):
            _check_length(model, len(prompt), "prompt")
        ids = await tokenizer.encode_async(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        if not isinstance(prompt, str) and any(not 0 <= t < vocab for t in ids):
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
        ids_list.append(ids)
    sampling = resolve_sampling(
        model,
        await model.contract(),
        given,
        prompt_tokens=max(len(ids) for ids in ids_list),
        default_max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS,
        prompt_param="prompt",
        guide=guide,
    )
    echo_texts = [tokenizer.decode(ids) for ids in ids_list for _ in range(n)] if echo else None
    prompt_tokens = sum(len(ids) for ids in ids_list)
    choices = _choices(ids_list, n, given.seed)
    plan = Plan(model, new_id("cmpl"), choices, sampling, prompt_tokens, stats, principal.project, echo_texts)
    return await _planned(plan, principal, limiter)


def _check_length(model: ServedModel, chars: int, param: str) -> None:
    """Refuse a prompt that cannot fit the context from its length alone, before tokenizing it."""
    at_least = model.tokenizer.min_tokens(chars)
    if at_least >= model.context_length:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {model.context_length} tokens. However, your prompt of "
            f"{chars} characters is at least {at_least} tokens.",
            param=param,
        )


async def _planned(plan: Plan, principal: Principal, limiter: RateLimiter | None) -> Plan:
    """Admit the plan (429 past a limit; prompt + max_tokens of every choice reserved) and time it."""
    if limiter is not None:
        reserve = plan.prompt_tokens + plan.sampling.max_tokens * len(plan.choices)
        plan.grant = await limiter.acquire(principal, plan.model.id, reserve)
    plan.stats.prompt_tokens = plan.prompt_tokens
    plan.stats.dispatched = time.monotonic()
    child(OVERHEAD, plan.model.id).observe(plan.stats.dispatched - plan.stats.started)
    return plan
