"""Live readers of a stream (logs, events) that never slow the stream down.

A follower has a bounded queue; what does not fit is counted, not waited for, and the
reader is told how much it missed. `drain` sends a follower's items to a control-socket
client and stops reading the queue while the client's socket is full.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, NoReturn, TypeVar

if TYPE_CHECKING:
    from .control import Connection

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


async def drain(c: Connection, follower: Follower[T], missed_method: str,
                send_some: Callable[[], None]) -> NoReturn:
    """Send a follower's items to a client until the client goes away (the Peer then
    cancels this task)."""
    while True:
        await follower.wakeup.wait()
        follower.wakeup.clear()
        while follower.queue or follower.missed:
            if not c.writable.is_set():
                await c.writable.wait()
            if follower.missed:
                c.notify(missed_method, {"count": follower.missed})
                follower.missed = 0
            send_some()
