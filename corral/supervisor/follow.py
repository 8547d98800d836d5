"""Live readers of a stream (logs, events) that never slow the stream down.

A follower has a bounded queue; what does not fit is counted, not waited for, and the
reader is told how much it missed. Sending a follower's items to a client is the
daemon's business (`corral.daemon.follow`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Follower(Generic[T]):
    """A bounded queue of items, each weighing `weigh(item)` (lines, for log batches)."""

    def __init__(self, maxlen: int, weigh: Callable[[T], int] = lambda item: 1) -> None:
        self.maxlen = maxlen
        self.weigh = weigh
        self.queue: deque[T] = deque()
        self.queued = 0
        self.missed = 0
        self.wakeup = asyncio.Event()

    def push(self, item: T) -> None:
        n = self.weigh(item)
        if self.queued + n > self.maxlen:
            self.missed += n
        else:
            self.queue.append(item)
            self.queued += n
        self.wakeup.set()

    def pop(self) -> T:
        item = self.queue.popleft()
        self.queued -= self.weigh(item)
        return item
