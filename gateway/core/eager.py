"""Tasks that start now: Python 3.12's eager tasks, for the 3.11 the gateway runs on.

``loop.create_task(work)`` runs nothing of ``work`` until the event loop's next pass. When a burst of
requests arrives in one pass, every request's handler runs first, and each one's upstream send only
in a later pass: the first request of the burst reaches Triton after the whole burst's parsing and
tokenizing. :func:`eager_task` runs ``work`` at once, inside the caller's step, up to its first real
wait (for a Triton request: until it is handed to gRPC), and a task of its own carries it on from
there. During that first step the new task is the current task and its context is the task's own,
as in 3.12, so ``asyncio.timeout`` and context variables see the task they will live in.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import types
from asyncio import tasks as _tasks
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _FirstStep(Generic[T]):
    """Where a coroutine stood after its first step: the future it waits on, or how it ended."""

    __slots__ = ("coro", "done", "error", "result", "waits_on")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.waits_on: Any = None
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def take(self) -> None:
        try:
            self.waits_on = self.coro.send(None)
        except StopIteration as stop:
            self.done, self.result = True, stop.value
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the task raises it, as a task would
            self.done, self.error = True, exc

    async def rest(self) -> T:
        """The task's body: the coroutine from where its first step left it."""
        return await _carry_on(self)  # type: ignore[no-any-return]


@types.coroutine
def _carry_on(step: _FirstStep[Any]) -> Generator[Any, Any, Any]:
    """Drive ``step.coro`` on: wait for what its first step waits on, then hand the coroutine over to
    ``yield from``, which passes every later send and throw straight through (in C, not in a loop here)."""
    if step.error is not None:
        error, step.error = step.error, None
        raise error
    if step.done:
        return step.result
    coro, waits_on = step.coro, step.waits_on
    while True:
        try:
            yield waits_on
        except BaseException as exc:  # a cancellation (or error) while it waits goes into the coroutine
            try:
                waits_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        # what it waited on is done: resume it (yield from's first send) and delegate from now on
        return (yield from coro)


def eager_task(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task running ``work``, whose first step has already run, in this call."""
    loop = asyncio.get_running_loop()
    step = _FirstStep(work)
    context = contextvars.copy_context()
    task = loop.create_task(step.rest(), context=context)
    task.add_done_callback(lambda _: _close_unstarted(step))
    caller = _tasks.current_task(loop)
    if caller is not None:
        _tasks._leave_task(loop, caller)
    _tasks._enter_task(loop, task)
    try:
        context.run(step.take)
    finally:
        _tasks._leave_task(loop, task)
        if caller is not None:
            _tasks._enter_task(loop, caller)
    return task


def _close_unstarted(step: _FirstStep[Any]) -> None:
    """A task cancelled before its own first step never resumed ``work``: close it (its finally blocks run)."""
    if not step.done and inspect.getcoroutinestate(step.coro) == inspect.CORO_SUSPENDED:
        step.coro.close()
