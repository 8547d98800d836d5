"""Live readers of a stream (logs, events) that never slow the stream down: a bounded
queue each, what does not fit counted, not waited for, and the reader told how much it
missed (sending to a client is `corral.daemon.follow`'s).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Follower(Generic[T]):
    """A bounded queue of items, each weighing `weigh(item)` (lines, for log batches),
    and together at most `max_bytes` by `size(item)`: a few huge items are bounded too."""

    def __init__(self, maxlen: int, weigh: Callable[[T], int] = lambda item: 1, *,
                 size: Callable[[T], int] = lambda item: 0, max_bytes: int = 0) -> None:
        self.maxlen = maxlen
        self.weigh = weigh
        self.size = size
        self.max_bytes = max_bytes
        self.queue: deque[T] = deque()
        self.queued = 0
        self.queued_bytes = 0
        self.missed = 0  # not yet told to the reader
        self.delivered = 0  # taken into the queue, in weight
        self.dropped = 0  # all that did not fit, in weight
        self.wakeup = asyncio.Event()

    def push(self, item: T) -> bool:
        """Queue `item`; False if it did not fit and was dropped (and counted)."""
        n = self.weigh(item)
        b = self.size(item)
        ok = self.queued + n <= self.maxlen and \
            (not self.max_bytes or self.queued_bytes + b <= self.max_bytes)
        if ok:
            self.queue.append(item)
            self.queued += n
            self.queued_bytes += b
            self.delivered += n
        else:
            self.missed += n
            self.dropped += n
        self.wakeup.set()
        return ok

    def pop(self) -> T:
        item = self.queue.popleft()
        self.queued -= self.weigh(item)
        self.queued_bytes -= self.size(item)
        return item
