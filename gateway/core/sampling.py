"""Sampling parameters checked against the model: what it supports, its context and output limits."""

from __future__ import annotations

from gateway.core.models import ServedModel
from gateway.core.types import Guide, SamplingInput, SamplingParams
from gateway.engine.contract import ModelContract
from gateway.errors import ContextLengthExceeded, InvalidRequest, UnsupportedParameter


def resolve_sampling(
    model: ServedModel,
    contract: ModelContract,
    given: SamplingInput,
    *,
    prompt_tokens: int,
    default_max_tokens: int,
    prompt_param: str = "messages",
    guide: Guide | None = None,
    guide_param: str = "response_format",
) -> SamplingParams:
    if given.top_logprobs and not contract.supports("top_logprobs"):
        param = given.logprobs_param
        raise UnsupportedParameter(
            f"'{param}' with alternatives is not supported by model '{model.id}': its Triton model returns no "
            "generation_logits (a TensorRT-LLM engine needs --gather_generation_logits); ask for the sampled "
            "tokens' logprobs alone",
            param=param,
        )
    if guide is not None and not contract.supports("guided_decoding"):
        raise UnsupportedParameter(
            f"'{guide_param}' is not supported by model '{model.id}': its Triton model has no guided decoding",
            param=guide_param,
        )
    vocab = model.tokenizer.vocab_size
    for token, _ in given.logit_bias:
        if token >= vocab:
            raise InvalidRequest(f"logit_bias: token id {token} is not in [0, {vocab})", param="logit_bias")
    if any(not 0 <= t < vocab for t in given.stop_token_ids):
        raise InvalidRequest(f"stop_token_ids must be in [0, {vocab})", param="stop_token_ids")
    requested = {
        "temperature": given.temperature is not None and given.temperature != 1.0,
        "top_p": given.top_p is not None and given.top_p != 1.0,
        "top_k": given.top_k is not None and given.top_k > 0,
        "seed": given.seed is not None,
        "min_tokens": given.min_tokens > 0,
        "ignore_eos": given.ignore_eos,
        "presence_penalty": bool(given.presence_penalty),
        "frequency_penalty": bool(given.frequency_penalty),
        "repetition_penalty": given.repetition_penalty is not None and given.repetition_penalty != 1.0,
        "logit_bias": bool(given.logit_bias),
        "logprobs": given.logprobs,
    }
    for param, used in requested.items():
        if used and not contract.supports(param):
            raise UnsupportedParameter(f"'{param}' is not supported by model '{model.id}'", param=param)

    limit = model.config.max_output_tokens
    context = model.context_length
    max_tokens, param = given.max_tokens, given.max_tokens_param
    if max_tokens is not None and max_tokens > limit:
        raise InvalidRequest(
            f"{param} is too large: {max_tokens}. This model supports at most {limit} completion tokens", param=param
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
    if given.min_tokens > max_tokens:
        raise InvalidRequest(
            f"min_tokens ({given.min_tokens}) must not exceed {param} ({max_tokens})", param="min_tokens"
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if given.temperature is None else given.temperature,
        top_p=1.0 if given.top_p is None else given.top_p,
        # past the vocabulary it restricts nothing; and runtime_top_k is an INT32 tensor (gRPC's top_k a uint32)
        top_k=min(given.top_k, vocab) if given.top_k is not None and given.top_k > 0 else 0,
        seed=given.seed,
        min_tokens=given.min_tokens,
        ignore_eos=given.ignore_eos,
        stop=given.stop,
        stop_ids=model.tokenizer.stop_sequences(given.stop) if given.stop and contract.supports("stop") else (),
        presence_penalty=given.presence_penalty or 0.0,
        frequency_penalty=given.frequency_penalty or 0.0,
        repetition_penalty=given.repetition_penalty or 1.0,
        logit_bias=given.logit_bias,
        stop_token_ids=given.stop_token_ids,
        logprobs=given.logprobs,
        top_logprobs=given.top_logprobs,
        guide=guide,
    )
