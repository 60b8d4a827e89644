"""eager_task: the work's first step runs in the call, as the task it will live in; the rest in that task."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from gateway.core.eager import eager_task

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def test_the_first_step_runs_before_the_call_returns_and_the_rest_in_the_task() -> None:
    seen: list[str] = []
    gate = asyncio.Event()

    async def work() -> str:
        seen.append("first step")
        await gate.wait()
        seen.append("rest")
        return "done"

    task = eager_task(work())
    assert seen == ["first step"]  # the caller has not yielded yet
    gate.set()
    assert await task == "done"
    assert seen == ["first step", "rest"]


async def test_during_its_first_step_the_task_is_current_and_its_context_its_own() -> None:
    caller = asyncio.current_task()
    current: list[asyncio.Task[object] | None] = []

    async def work() -> str:
        current.append(asyncio.current_task())
        VAR.set("work")
        async with asyncio.timeout(5):  # binds to the current task: it must be the work's
            await asyncio.sleep(0)
        current.append(asyncio.current_task())
        return VAR.get()

    task = eager_task(work())
    assert asyncio.current_task() is caller  # given back to the caller
    assert VAR.get() == "unset"  # the work's context is a copy, not the caller's
    assert await task == "work"
    assert current == [task, task]


async def test_a_timeout_entered_in_the_first_step_cancels_the_work_not_the_caller() -> None:
    async def work() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()

    task = eager_task(work())
    with pytest.raises(TimeoutError):
        await task
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_errors_and_results_of_a_first_step_that_does_not_wait() -> None:
    async def fails() -> None:
        raise ValueError("at once")

    async def returns() -> int:
        return 7

    with pytest.raises(ValueError, match="at once"):
        await eager_task(fails())
    assert await eager_task(returns()) == 7


async def test_cancelled_before_its_own_step_the_work_is_closed() -> None:
    cleaned = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    task = eager_task(work())
    task.cancel()  # before the task ran a step of its own
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()


async def test_cancelled_later_the_work_sees_the_cancellation() -> None:
    handled: list[str] = []
    started = asyncio.Event()

    async def work() -> None:
        await asyncio.sleep(0)
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            handled.append("cancelled")
            raise

    task = eager_task(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handled == ["cancelled"]
