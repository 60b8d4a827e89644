"""Stopping a request's generations without cancelling a Triton call under a read.

A task cancelled while it awaits a gRPC read makes grpc cancel the call, and cancelling a
``ModelStreamInfer`` call while Triton still sends on it is a race in Triton's stream handler that
crashes or deadlocks it (server issues #7368, #7472, #8034). So a transport runs a request's work in
a task of its own (:func:`guarded`): when the client goes away, that task is not cancelled; the
request's :class:`Halt` is triggered instead, each live upstream call stops its model in-band, and
the work ends by itself as the models end their requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.core.eager import eager_task

log = logging.getLogger(__name__)

T = TypeVar("T")

_DETACHED: set[asyncio.Task[Any]] = set()  # work whose caller went away, until it ends


class Halt:
    """One request's stop signal: the upstream calls it started register how each is stopped."""

    __slots__ = ("_hooks", "halted")

    def __init__(self) -> None:
        self._hooks: list[Callable[[], object]] = []
        self.halted = False

    def on_halt(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` when the request is halted (at once if it already is)."""
        if self.halted:
            hook()
        else:
            self._hooks.append(hook)

    def trigger(self) -> bool:
        """Stop every call registered so far; False when none was (nothing upstream to stop)."""
        self.halted = True
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()
        return bool(hooks)


async def guarded(halt: Halt, work: Coroutine[Any, Any, T]) -> T:
    """``work``'s result, with ``work`` run in a task of its own that cancelling the caller does not cancel.

    The task starts at once (:func:`eager_task`): a request goes upstream in its handler's own step,
    not after every other request that arrived in the same burst.

    When the caller is cancelled (the client went away), the request is halted and ``work`` goes on
    until its models have ended their requests; if no upstream call was started yet, ``work`` is
    simply cancelled (it is not under a Triton read).
    """
    task = eager_task(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done():
            if task.cancelled() or task.exception() is not None:
                raise
            # the work was complete (the client hung up just after its last byte): a result, not a loss
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            return task.result()
        if halt.trigger():
            _DETACHED.add(task)
            task.add_done_callback(_ended)
        else:
            task.cancel()
        raise


def _ended(task: asyncio.Task[Any]) -> None:
    _DETACHED.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("work of a request whose client went away ended with %r", exc)
