"""The clock a person's waits (an ask's deadline, `suspend_after`) and `restart_cron` are
measured by: the wall's, or a manual one (`[supervisor] manual_clock`) that only
`corral clock --advance` moves, firing at once every timer it passed, in their order."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable

from ... import jsonrpc
from ...jsonrpc import RpcError

# libuv counts whole milliseconds: its timer may fire a little before the earliest's time
RESOLUTION = 0.001
MANUAL_ONLY = ("the daemon's clock is the wall's: only a manual clock moves ([supervisor] "
               "manual_clock = true, for tests)")


class WaitTimer:
    """A callback due at a time of its clock."""

    __slots__ = ("_clock", "callback", "when")

    def __init__(self, clock: WaitClock, when: float, callback: Callable[[], object]) -> None:
        self._clock = clock
        self.when = when
        self.callback: Callable[[], object] | None = callback  # None: fired or cancelled

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self._clock._dropped()


class WaitClock:
    """Time, and callbacks at a time of it (`manual`: moved only by `advance`), in a heap
    behind one loop timer: a loop timer each cost 600 bytes a waiting task."""

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self.offset = 0.0  # how far a manual clock was moved
        self._made_at = time.time()  # where a manual clock stands before it is moved
        self._heap: list[tuple[float, int, WaitTimer]] = []
        self._made = itertools.count()  # (timers due at once fire in the order made)
        self._cancelled = 0  # of the heap's timers
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the loop's timer fires

    def time(self) -> float:
        return (self._made_at if self.manual else time.time()) + self.offset

    @property
    def timers(self) -> set[WaitTimer]:
        return {t for _, _, t in self._heap if t.callback is not None}

    def call_later(self, delay: float, callback: Callable[[], object]) -> WaitTimer:
        timer = WaitTimer(self, self.time() + delay, callback)
        heapq.heappush(self._heap, (timer.when, next(self._made), timer))
        if timer.when < self._at:
            self._arm()
        return timer

    def _dropped(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > len(heap) // 2 and self._cancelled > 64:
            self._heap = [e for e in heap if e[2].callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._heap:
            self._at = math.inf
            return
        self._at = self._heap[0][0]
        delay = self._at - self.time()
        if self.manual and delay > RESOLUTION:  # due only once `advance` reaches it
            return
        self._handle = asyncio.get_running_loop().call_later(max(0.0, delay), self._fire)

    def _fire(self) -> None:
        self._handle = None
        heap, due = self._heap, []
        now = self.time() + RESOLUTION
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.callback is None:
                self._cancelled -= 1
            else:
                due.append(timer)
        self._at = math.inf
        self._arm()
        for timer in due:  # (each as a loop's callback would be: one's error not the next's)
            callback = timer.callback
            if callback is None:  # cancelled by one fired before it
                continue
            timer.callback = None
            try:
                callback()
            except Exception as exc:
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "a clock's timer failed", "exception": exc})

    def advance(self, seconds: float) -> float:
        """Move a manual clock `seconds` ahead, firing the timers it passes now; its new time."""
        if not self.manual:
            raise RpcError(jsonrpc.REFUSED, MANUAL_ONLY)
        if not 0 <= seconds <= 10 * 365 * 86400:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"a clock moves forward, by at most ten "
                                                   f"years: not {seconds:g} s")
        self.offset += seconds
        if self._heap:
            self._arm()
        return self.time()
