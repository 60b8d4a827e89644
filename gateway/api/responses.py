"""POST /v1/responses: OpenAI's Responses API, served statelessly over chat's generate path.

A request becomes what chat plans (messages, sampling, an :class:`OutputShape`) and is generated and
sent by the same path (:func:`gateway.api.respond.respond`); :mod:`gateway.api.responses_events` writes
the result as a Response object or as the API's typed event stream. Nothing is stored: the
conversation travels in ``input``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.auth import principal_of
from gateway.api.body import parse, read_json
from gateway.api.context import CONFIG, LIMITER, PLAN, REGISTRY, STARTED, now
from gateway.api.respond import respond
from gateway.api.responses_events import ResponseEvents
from gateway.api.responses_schema import (
    LOGPROBS_INCLUDE,
    FunctionCallItem,
    FunctionChoice,
    MessageItem,
    ResponsesRequest,
)
from gateway.api.schema import JsonObjectFormat, TextFormat
from gateway.core.plan import OutputShape, Plan, checked_shape, plan_chat
from gateway.core.types import SamplingInput, Tool, ToolChoice
from gateway.errors import UnsupportedParameter

_NO_STATE = "this gateway stores no responses: send the whole conversation in 'input'"


async def create_response(request: web.Request) -> web.StreamResponse:
    # the table chat and completions share does not apply: `store` and `metadata` mean other things here
    body = parse(ResponsesRequest, await read_json(request, request.app[CONFIG].max_body_bytes), unsupported={})
    refuse_unsupported(body)
    plan = await plan_chat(
        principal_of(request),
        request.app[REGISTRY],
        body.model,
        chat_messages(body),
        1,
        SamplingInput(
            max_tokens=body.max_output_tokens,
            max_tokens_param="max_output_tokens",
            temperature=body.temperature,
            top_p=body.top_p,
        ),
        limiter=request.app[LIMITER],
        started=request[STARTED],
        shape=output_shape(body),
        prompt_param="input",
    )
    plan.request_id = response_id(plan.request_id)  # the id the client sees names the Triton requests and the log
    request[PLAN] = plan
    fmt = ResponseEvents(plan.request_id, now(), plan.model.id, echo(body, plan))
    return await respond(request, fmt, plan, body)


def refuse_unsupported(body: ResponsesRequest) -> None:
    """A 400 naming the first parameter that needs stored state or a feature the gateway lacks."""
    if body.store:
        raise UnsupportedParameter(
            "Responses are not stored by this gateway: 'store' must be false or left out", param="store"
        )
    if body.previous_response_id is not None:
        param = "previous_response_id"
        raise UnsupportedParameter(f"'{param}' is not supported: {_NO_STATE}", param=param)
    if body.conversation is not None:
        raise UnsupportedParameter(f"'conversation' is not supported: {_NO_STATE}", param="conversation")
    if body.background:
        raise UnsupportedParameter(
            "Background responses are not supported: this gateway stores no responses to poll", param="background"
        )
    if body.prompt is not None:
        raise UnsupportedParameter(
            "Stored prompts ('prompt') are not supported: send the text in 'instructions' and 'input'", param="prompt"
        )
    if body.reasoning is not None and any(v not in (None, "none") for v in body.reasoning.values()):
        raise UnsupportedParameter("'reasoning' is not supported by this gateway's models", param="reasoning")
    if body.truncation == "auto":
        raise UnsupportedParameter(
            "'truncation': 'auto' is not supported: an input longer than the model's context is refused, not cut",
            param="truncation",
        )
    if body.top_logprobs or LOGPROBS_INCLUDE in (body.include or ()):
        param = "top_logprobs" if body.top_logprobs else "include"
        raise UnsupportedParameter("Logprobs are not supported on /v1/responses: use /v1/chat/completions", param=param)
    if body.service_tier not in (None, "auto", "default"):
        raise UnsupportedParameter("'service_tier' is not supported by this gateway", param="service_tier")


def chat_messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages: a function call joins the assistant message
    before it (or makes one), and its output becomes a ``tool`` message."""
    messages: list[dict[str, Any]] = []
    if body.instructions is not None:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    for item in body.input:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            function = {"name": item.name, "arguments": item.arguments}
            call = {"id": item.call_id, "type": "function", "function": function}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
    return messages


def response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (None: plain text)."""
    given = body.text.format if body.text is not None else None
    if given is None or isinstance(given, TextFormat):
        return None
    if isinstance(given, JsonObjectFormat):
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": given.model_dump(by_alias=True, exclude_none=True, exclude={"type"})}


def output_shape(body: ResponsesRequest) -> OutputShape:
    tools = tuple(Tool(t.name, t.description or "", t.parameters or {}) for t in body.tools or ())
    given = body.tool_choice
    choice: ToolChoice | None
    if isinstance(given, FunctionChoice):
        choice = ToolChoice("named", given.name)
    elif given is None or (given != "required" and not tools):  # auto or none with nothing to call: the default
        choice = None
    else:
        choice = ToolChoice(given)
    return checked_shape(response_format(body), tools, choice, body.parallel_tool_calls, "text.format")


def response_id(plan_id: str) -> str:
    return "resp_" + plan_id.rpartition("-")[2]


def echo(body: ResponsesRequest, plan: Plan) -> dict[str, Any]:
    """The request's settings as OpenAI repeats them in every Response object."""
    text: dict[str, Any] = {"format": {"type": "text"}}
    if body.text is not None:
        if body.text.format is not None:
            text["format"] = body.text.format.model_dump(by_alias=True)
        if body.text.verbosity is not None:
            text["verbosity"] = body.text.verbosity
    choice = body.tool_choice
    return {
        "background": False,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": None,
        "prompt_cache_key": body.prompt_cache_key,
        "reasoning": None,
        "safety_identifier": body.safety_identifier,
        "service_tier": "default",
        "store": False,
        "temperature": plan.sampling.temperature,
        "text": text,
        "tool_choice": choice.model_dump() if isinstance(choice, FunctionChoice) else choice or "auto",
        "tools": [tool.model_dump() for tool in body.tools or ()],
        "top_logprobs": 0,
        "top_p": plan.sampling.top_p,
        "truncation": "disabled",
        "user": body.user,
    }
