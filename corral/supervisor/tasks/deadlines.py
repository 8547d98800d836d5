"""The deadlines of running attempts, behind one timer (a timer per attempt cost more than
the rest of a tiny task's dispatch).

Attempts of one timeout are kept in start order, which is deadline order (`loop.time()`
never goes back): an insertion-ordered dict per timeout, one timer for the earliest.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")  # what a deadline is for (a task), hashed by identity
# libuv's timers count whole milliseconds: one may fire a little before its deadline as
# `loop.time()` tells it, which must not make it wait a turn (or spin) for the rest
RESOLUTION = 0.001


class Deadlines(Generic[K]):
    __slots__ = ("_at", "_by_timeout", "_expire", "_loop", "_timer")

    def __init__(self, expire: Callable[[K], None]) -> None:
        self._expire = expire
        self._by_timeout: dict[float, dict[K, float]] = {}  # timeout -> key -> deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires

    def add(self, key: K, timeout: float) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        at = loop.time() + timeout
        group = self._by_timeout.get(timeout)
        if group is None:
            group = self._by_timeout[timeout] = {}
        group.pop(key, None)  # (re-added: now at the end, in its new order)
        group[key] = at
        if at < self._at:
            self._arm(at)

    def discard(self, key: K, timeout: float) -> bool:
        """`key` will not expire; whether it was waiting to."""
        group = self._by_timeout.get(timeout)
        if group is None:
            return False
        at = group.pop(key, None)
        if not group:
            del self._by_timeout[timeout]
        return at is not None

    def __len__(self) -> int:
        return sum(len(g) for g in self._by_timeout.values())

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._at = at
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._at = None, math.inf
        assert self._loop is not None
        now = self._loop.time()
        expired: list[tuple[float, K]] = []
        upcoming = math.inf
        for timeout, group in list(self._by_timeout.items()):
            due = []
            for key, at in group.items():  # in the order of their deadlines
                if at > now + RESOLUTION:
                    upcoming = min(upcoming, at)
                    break
                due.append((at, key))
            for _, key in due:
                del group[key]
            if not group:
                del self._by_timeout[timeout]
            expired += due
        if upcoming < math.inf:
            self._arm(upcoming)
        # a late fire (a stalled loop) finds several timeouts' attempts due: each group is
        # in deadline order, the groups not with each other
        expired.sort(key=_deadline)
        for _, key in expired:
            self._expire(key)


def _deadline(due: tuple[float, object]) -> float:
    return due[0]
