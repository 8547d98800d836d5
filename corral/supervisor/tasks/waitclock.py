"""The clock a person's waits are measured by: an ask's deadline, a waiting task's
`suspend_after` (docs/approvals.md#waiting-without-a-process); and the minutes an agent's
`restart_cron` matches (daemon/cronrestart.py).

It is the wall's, or, for a test that must show what days of waiting do in seconds, a
manual one ([supervisor] manual_clock = true) that only `corral clock --advance` moves
forward: its timers are the loop's, each due when the clock's time reaches it, so
moving it fires at once every timer it passed, in their order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ... import jsonrpc
from ...jsonrpc import RpcError

MANUAL_ONLY = ("the daemon's clock is the wall's: only a manual clock moves ([supervisor] "
               "manual_clock = true, for tests)")


class WaitTimer:
    """A callback due at a time of its clock; `cancel` before it is due and it is not
    called."""

    __slots__ = ("_clock", "_handle", "callback", "when")

    def __init__(self, clock: WaitClock, when: float, callback: Callable[[], object]) -> None:
        self._clock = clock
        self.when = when
        self.callback = callback
        self._handle: asyncio.TimerHandle | None = None

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(max(0.0, self.when - self._clock.time()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._clock.timers.discard(self)
        self.callback()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._clock.timers.discard(self)


class WaitClock:
    """Time, and callbacks at a time of it; `manual`: moved only by `advance`."""

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self.offset = 0.0  # how far a manual clock was moved ahead of the wall
        self.timers: set[WaitTimer] = set()

    def time(self) -> float:
        return time.time() + self.offset

    def call_later(self, delay: float, callback: Callable[[], object]) -> WaitTimer:
        timer = WaitTimer(self, self.time() + delay, callback)
        timer._schedule()
        self.timers.add(timer)
        return timer

    def advance(self, seconds: float) -> float:
        """Move a manual clock `seconds` ahead: the timers it passes fire now. Its new
        time; refused (REFUSED) on the wall's clock, or for a negative or absurd move."""
        if not self.manual:
            raise RpcError(jsonrpc.REFUSED, MANUAL_ONLY)
        if not 0 <= seconds <= 10 * 365 * 86400:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"a clock moves forward, by at most ten "
                                                   f"years: not {seconds:g} s")
        self.offset += seconds
        for timer in sorted(self.timers, key=lambda t: t.when):
            if timer._handle is not None:
                timer._handle.cancel()
                timer._schedule()
        return self.time()
