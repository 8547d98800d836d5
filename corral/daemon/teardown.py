"""The daemon's parts torn down in the reverse of their order, each within a deadline: a
step that has not finished by then is said in the log, cancelled and not waited for. One
stuck step cannot hang the stop: under systemd the daemon would be SIGKILLed at
TimeoutStopSec, before the steps after it (the state database's last writes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

# seconds a part's teardown may take (the agents' stop and the trace exporter's last
# export: their own bounds, longer); `corral systemd install` gives the daemon's own
# teardown 15 s of TimeoutStopSec, so one stuck step leaves the rest some of it
TEARDOWN_STEP = 10.0


class Teardown:
    """The AsyncExitStack of the daemon's parts, each entered under a name."""

    def __init__(self, stack: contextlib.AsyncExitStack,
                 say: Callable[[str], None]) -> None:
        self.stack = stack
        self.say = say  # the daemon's log, at warning's priority
        self.skipped: list[str] = []  # the steps past their deadline, in order

    async def enter(self, name: str, part: contextlib.AbstractAsyncContextManager[T],
                    bound: Callable[[], float] | None = None) -> T:
        """Enter `part`; its teardown, when the stack unwinds, within TEARDOWN_STEP
        seconds, or `bound()` asked as it begins (what it waits on may have grown
        since the start)."""
        value = await part.__aenter__()

        async def leave(kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
            seconds = TEARDOWN_STEP
            if bound is not None:
                try:
                    seconds = bound()
                except Exception as wrong:  # a bug in a bound must not skip the teardown
                    self.say(f"stopping: {name}'s deadline is TEARDOWN_STEP ({wrong!r})")
            return await self._within(name, seconds, part.__aexit__(kind, exc, tb))

        self.stack.push_async_exit(leave)
        return value

    async def _within(self, name: str, seconds: float, step: Any) -> bool:
        task: asyncio.Task[bool | None] = asyncio.ensure_future(step)
        try:
            done, _ = await asyncio.wait([task], timeout=seconds)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if done:
            return bool(task.result())
        task.cancel()  # not awaited: a step that ignores it is left behind, not waited on
        self.skipped.append(name)
        self.say(f"stopping: {name} did not finish within {seconds:g} s "
                 f"(TEARDOWN_STEP): skipped")
        return False
