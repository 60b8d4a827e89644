"""The one generate path every API adapter uses: choices in, text deltas out.

Each choice is one Triton stream run through its :class:`StreamState`. One choice is iterated
directly (the common case, no extra task or queue); several are run as tasks merged through a
queue. Leaving the iterator early (client gone, error) closes every Triton stream it opened,
which cancels those requests in Triton.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator

from gateway.core.models import ServedModel
from gateway.core.types import Choice, Delta, GenerateRequest, SamplingParams
from gateway.text.stream_state import StreamState


async def generate_choice(
    model: ServedModel, request_id: str, choice: Choice, sampling: SamplingParams
) -> AsyncGenerator[Delta, None]:
    """Deltas of one choice; the last one carries the finish reason."""
    if choice.seed is not None and choice.seed != sampling.seed:
        sampling = dataclasses.replace(sampling, seed=choice.seed)
    contract = await model.contract()
    tokenizer = model.tokenizer
    state = StreamState(tokenizer, sampling.max_tokens, sampling.stop, sampling.ignore_eos)
    request = GenerateRequest(f"{request_id}-{choice.index}", choice.prompt_ids, sampling)
    end_id = -1 if sampling.ignore_eos else tokenizer.eos_token_id
    tokens = model.client.generate(contract, request, end_id, tokenizer.pad_token_id)
    index = choice.index
    try:
        async for ids in tokens:
            text = state.feed(ids)
            if state.finish_reason is not None:
                yield Delta(index, text, state.finish_reason, state.completion_tokens)
                return
            if text:
                yield Delta(index, text, None, state.completion_tokens)
        text = state.finish()
        yield Delta(index, text, state.finish_reason, state.completion_tokens)
    finally:
        await tokens.aclose()  # cancels the Triton request if it is still running


async def generate(
    model: ServedModel, request_id: str, choices: list[Choice], sampling: SamplingParams
) -> AsyncGenerator[Delta, None]:
    """Deltas of every choice, interleaved as they arrive."""
    if len(choices) == 1:
        async for delta in generate_choice(model, request_id, choices[0], sampling):
            yield delta
        return
    queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        try:
            async for delta in generate_choice(model, request_id, choice, sampling):
                queue.put_nowait(delta)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(c)) for c in choices]
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
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
