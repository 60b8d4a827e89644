"""The one generate path every API adapter uses: a plan in, text deltas out.

Each choice is one Triton stream run through its :class:`StreamState`. One choice is iterated
directly (the common case, no extra task or queue); several are run as tasks merged through a
queue. Leaving the iterator early (an error, a stop string) ends every Triton stream it opened
without cancelling it under Triton: the models are stopped in-band (:mod:`gateway.engine.stopping`).
A transport runs this under :func:`gateway.core.halt.guarded`, so a client that goes away halts the
request instead of cancelling a task that is reading from Triton.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator

from gateway.core.halt import Halt
from gateway.core.lifecycle import LIFECYCLE
from gateway.core.models import ServedModel
from gateway.core.plan import Plan
from gateway.core.types import (
    Choice,
    ChoiceOutput,
    Delta,
    FinishReason,
    GenerateRequest,
    RequestStats,
    SamplingParams,
    TokenLogprob,
    Tokens,
    ToolCallDelta,
    Usage,
)
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.observability.metrics import IN_FLIGHT, TOKENS, UPSTREAM_ERRORS, ChoiceObserver, child
from gateway.text.stop import StopTail
from gateway.text.stream_state import StreamState
from gateway.text.toolcalls import ToolCallParser, make_parser

log = logging.getLogger(__name__)

# token responses a finished choice still reads while its model ends the request itself
_DRAIN_RESPONSES = 4


class _Output:
    """What a choice sends beside its text: tool calls parsed out of it, the logprobs of its tokens."""

    __slots__ = ("calls", "logprobs", "parser")

    def __init__(self, tool_format: str | None, prefill: str, logprobs: bool) -> None:
        self.parser: ToolCallParser | None = None
        self.calls: list[ToolCallDelta] | None = None
        if tool_format is not None:
            self.parser = make_parser(tool_format)
            if prefill:  # the call's opening markup, given to the model as the start of its answer
                self._split(self.parser.feed(prefill))
        self.logprobs: list[TokenLogprob] | None = [] if logprobs else None

    def _split(self, events: list[str | ToolCallDelta]) -> str:
        text: list[str] = []
        for event in events:
            if isinstance(event, str):
                text.append(event)
            elif self.calls is None:
                self.calls = [event]
            else:
                self.calls.append(event)
        return "".join(text)

    def text(self, text: str, final: bool = False) -> str:
        """The content part of ``text`` (all of it without a tool parser)."""
        if self.parser is None:
            return text
        events = self.parser.feed(text) if text else []
        if final:
            events.extend(self.parser.finish())
        return self._split(events)

    def delta(self, index: int, text: str, reason: FinishReason | None, count: int) -> Delta:
        """A delta that takes the tool calls and logprobs gathered since the last one."""
        if reason is FinishReason.STOP and self.parser is not None and self.parser.calls_seen:
            reason = FinishReason.TOOL_CALLS
        delta = Delta(index, text, reason, count, self.logprobs or None, self.calls)
        self.calls = None
        if self.logprobs:
            self.logprobs = []
        return delta

    @property
    def pending(self) -> bool:
        return self.calls is not None


async def generate_choice(
    model: ServedModel,
    request_id: str,
    choice: Choice,
    sampling: SamplingParams,
    stats: RequestStats,
    halt: Halt,
    tool_format: str | None = None,
) -> AsyncGenerator[Delta, None]:
    """Deltas of one choice; the last one carries the finish reason.

    A choice that is complete before its upstream stream ended (its length reached, the end token,
    a stop string the model stops on too) reads that stream to its end: the model is about to end
    the request itself. Only a model that would go on is stopped, and in-band, by closing the stream
    (:mod:`gateway.engine.stopping`): cancelling a Triton call as it sends is a race that crashes
    older tritonservers.
    """
    if choice.seed is not None and choice.seed != sampling.seed:
        sampling = dataclasses.replace(sampling, seed=choice.seed)
    tokenizer = model.tokenizer
    state = StreamState(tokenizer, sampling.max_tokens, sampling.stop, sampling.ignore_eos, sampling.stop_token_ids)
    config = model.config
    request = GenerateRequest(
        f"{request_id}-{choice.index}",
        choice.prompt_ids,
        sampling,
        config.first_token_timeout,
        config.idle_timeout,
        tokenizer.vocab_size,
        halt,
    )
    prefill = sampling.guide.prefill if sampling.guide is not None else ""
    output = _Output(tool_format, prefill, sampling.logprobs)
    end_id = -1 if sampling.ignore_eos else tokenizer.eos_token_id
    tokens = model.upstreams.generate(request, end_id, tokenizer.pad_token_id, stats)
    index = choice.index
    observer = ChoiceObserver(model.id, stats.started)
    tail = StopTail(sampling.stop_ids)
    try:
        async for response in tokens:
            ids = response.ids
            tail.feed(ids)
            text = state.feed(ids)
            if output.logprobs is not None and response.logprobs:
                output.logprobs.extend(response.logprobs)
            if text:
                observer.delta()
                if not stats.first_token:
                    stats.first_token = time.monotonic()
            if state.finish_reason is not None:
                text = output.text(text, final=True)
                yield output.delta(index, text, state.finish_reason, state.completion_tokens)
                if state.finish_reason is FinishReason.LENGTH or end_id in ids or tail.model_stops:
                    await _read_to_end(tokens)
                return
            if text and ((text := output.text(text)) or output.pending):
                yield output.delta(index, text, None, state.completion_tokens)
        text = output.text(state.finish(), final=True)
        yield output.delta(index, text, state.finish_reason, state.completion_tokens)
    except (UpstreamError, UpstreamUnavailable, UpstreamTimeout) as exc:
        UPSTREAM_ERRORS.labels(model.id, exc.kind.grpc_status).inc()
        raise
    finally:
        stats.completion_tokens += state.completion_tokens
        await tokens.aclose()  # a Triton request still running is stopped in-band


async def _read_to_end(tokens: AsyncGenerator[Tokens, None]) -> None:
    """Let a model that is ending the request end it (a few stray responses at most, then stop it)."""
    try:
        extra = 0
        async for _ in tokens:
            extra += 1
            if extra > _DRAIN_RESPONSES:
                return  # it went on after all: the caller's aclose() stops it
    except GatewayError as exc:  # the choice is complete; what the upstream says now changes nothing
        log.info("upstream error after a complete choice: %s", exc.message)


async def generate(plan: Plan) -> AsyncGenerator[Delta, None]:
    """Deltas of every choice of the plan, interleaved as they arrive; counted in the metrics."""
    in_flight = child(IN_FLIGHT, plan.model.id)
    in_flight.inc()
    LIFECYCLE.begin()
    try:
        async with plan.model.admission.slot(plan.stats):  # 503 at once when the upstream is saturated
            async for delta in _generate(plan):
                yield delta
    finally:
        LIFECYCLE.end()
        in_flight.dec()
        stats = plan.stats
        if plan.grant is not None:
            await plan.grant.release(stats.prompt_tokens + stats.completion_tokens)
        child(TOKENS, plan.model.id, plan.project, "input_tokens").inc(stats.prompt_tokens)
        child(TOKENS, plan.model.id, plan.project, "output_tokens").inc(stats.completion_tokens)


def _generate(plan: Plan) -> AsyncGenerator[Delta, None]:
    """The deltas of the plan's one choice (its own generator: no layer more per token), or of its choices
    interleaved."""
    if len(plan.choices) == 1:
        choice = plan.choices[0]
        return generate_choice(
            plan.model, plan.request_id, choice, plan.sampling, plan.stats, plan.halt, plan.tool_format
        )
    return _interleaved(plan)


async def _interleaved(plan: Plan) -> AsyncGenerator[Delta, None]:
    model, request_id, sampling, stats, halt = plan.model, plan.request_id, plan.sampling, plan.stats, plan.halt
    queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        try:
            async for delta in generate_choice(model, request_id, choice, sampling, stats, halt, plan.tool_format):
                queue.put_nowait(delta)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, which raises it
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(c)) for c in plan.choices]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        # choices still running when the request ends early: stop their models in-band, and cancel
        # only tasks that are not under a Triton read (none of their calls began)
        if any(not t.done() for t in tasks) and not plan.halt.trigger():
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect(plan: Plan) -> tuple[list[ChoiceOutput], Usage]:
    """The whole output of every choice, for non-streaming responses."""
    outputs = [ChoiceOutput() for _ in plan.choices]
    usage = Usage(prompt_tokens=plan.prompt_tokens)
    deltas = generate(plan)
    try:
        async for delta in deltas:
            outputs[delta.index].add(delta)
            if delta.finish_reason is not None:
                usage.completion_tokens += delta.completion_tokens
    finally:
        await deltas.aclose()
    return outputs, usage
