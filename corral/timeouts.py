"""Waits bounded in time that keep a cancellation, and tasks held until they end.

`asyncio.wait_for` on Python 3.11 returns the result of an awaitable that finished in
the same turn as its caller was cancelled, and the cancellation is lost (a loop cancelled
then goes on for ever); `asyncio.timeout` has no such window, so every bounded wait in
corral goes through `within` (ruff bans `asyncio.wait_for` in the package). Libraries
still use it (redis-py): `cancel_all` asks again until a task has ended."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=asyncio.Future[Any])


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """`await aw`, or TimeoutError once `timeout` seconds have passed (None: no bound).
    A coroutine runs in the caller's task (not a task of its own, as with wait_for)."""
    if timeout is None:  # (no Timeout to make, enter and leave: one never fires)
        return await aw
    async with asyncio.timeout(timeout):
        return await aw


async def waited(fut: asyncio.Future[T], timeout: float | None) -> T:
    """`within(asyncio.shield(fut), timeout)`: `fut`'s result, or TimeoutError once
    `timeout` seconds have passed (None: no bound), `fut` (shared: a task's end, a
    driver) never cancelled by this wait or its caller's cancellation. One future of the
    caller's and a timer, not a shield's and a Timeout's (a run's wait, at every run)."""
    if not fut.done():
        loop = fut.get_loop()  # (not get_running_loop: on 3.11 a getpid syscall a call)
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        fut.add_done_callback(wake)
        timer = None if timeout is None else loop.call_later(timeout, wake)
        try:
            await woken
        finally:
            fut.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
        if not fut.done():
            raise TimeoutError
    return fut.result()


# how long a cancelled task may go on before it is asked again: a cancellation lost in a
# library shows as a task still running after its next await, which is at most a beat
AGAIN_AFTER = 0.1


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel these tasks and return once every one has ended, asking again those a
    cancellation did not end (one a library swallowed); the first exception other than
    a cancellation that one of them ended with is raised, as awaiting it would."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=AGAIN_AFTER)
    # each one's looked at (a task whose exception nobody read is logged when collected)
    raised = [exc for t in tasks if not t.cancelled() and (exc := t.exception()) is not None]
    if raised:
        raise raised[0]


def kept(tasks: set[F], task: F) -> F:
    """`task`, held in `tasks` until it ends: the loop references a task only weakly, and
    one nothing holds may be collected before it is done."""
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
