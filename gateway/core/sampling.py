"""Sampling parameters checked against the model: what it supports, its context and output limits."""

from __future__ import annotations

from gateway.core.models import ServedModel
from gateway.core.types import SamplingParams
from gateway.engine.contract import ModelContract
from gateway.errors import ContextLengthExceeded, InvalidRequest, UnsupportedParameter


def resolve_sampling(
    model: ServedModel,
    contract: ModelContract,
    *,
    prompt_tokens: int,
    max_tokens: int | None,
    default_max_tokens: int,
    max_tokens_param: str = "max_tokens",
    prompt_param: str = "messages",
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    min_tokens: int = 0,
    ignore_eos: bool = False,
    stop: tuple[str, ...] = (),
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
) -> SamplingParams:
    requested = {
        "temperature": temperature is not None and temperature != 1.0,
        "top_p": top_p is not None and top_p != 1.0,
        "top_k": top_k is not None and top_k > 0,
        "seed": seed is not None,
        "min_tokens": min_tokens > 0,
        "ignore_eos": ignore_eos,
        "presence_penalty": bool(presence_penalty),
        "frequency_penalty": bool(frequency_penalty),
    }
    for param, used in requested.items():
        if used and not contract.supports(param):
            raise UnsupportedParameter(f"'{param}' is not supported by model '{model.id}'", param=param)

    limit = model.config.max_output_tokens
    context = model.context_length
    if max_tokens is not None and max_tokens > limit:
        raise InvalidRequest(
            f"{max_tokens_param} is too large: {max_tokens}. This model supports at most {limit} completion tokens",
            param=max_tokens_param,
        )
    room = context - prompt_tokens
    if max_tokens is None:
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. "
                f"However, your prompt is {prompt_tokens} tokens.",
                param=prompt_param,
            )
        max_tokens = min(default_max_tokens, limit, room)
    elif max_tokens > room:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} in the completion). "
            "Please reduce the length of the prompt or completion.",
            param=prompt_param,
        )
    if min_tokens > max_tokens:
        raise InvalidRequest(
            f"min_tokens ({min_tokens}) must not exceed {max_tokens_param} ({max_tokens})", param="min_tokens"
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=top_k if top_k is not None and top_k > 0 else 0,
        seed=seed,
        min_tokens=min_tokens,
        ignore_eos=ignore_eos,
        stop=stop,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
    )
