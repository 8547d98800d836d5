"""Work that comes in bursts, one item per replica, run at most BATCH items per loop turn:
a thousand starts, stops or exits at once would otherwise all run in one turn while the
control socket and the heartbeat wait (a 378 ms stall at 1000 agents). One queue for all
kinds of work: a mass stop's stops and exits share each slice's budget.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("corral.supervisor")

# items per turn: each exit settled runs its reap, events and pipes' ends next turn; in a
# mass stop of 1000 a control call waited 40-57 ms a turn at 32, 21-31 ms at 16, the stop
# as long
BATCH = 16


class Pacer:
    """A FIFO of callbacks, run BATCH per turn of the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, batch: int = BATCH) -> None:
        self.loop = loop
        self.batch = batch
        self._queue: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._scheduled = False
        self.slices = 0  # turns that ran queued work, since start
        self.items = 0
        self.most_waiting = 0  # the longest the queue has been

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` in this turn's slice or a later one, after what is queued."""
        self._queue.append((fn, args))
        self.most_waiting = max(self.most_waiting, len(self._queue))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._slice)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _slice(self) -> None:
        self.slices += 1
        q = self._queue
        for _ in range(min(self.batch, len(q))):
            fn, args = q.popleft()
            self.items += 1
            try:
                fn(*args)
            except Exception:  # one item's failure is not the others'
                log.exception("paced work %r failed", fn)
        if q:  # the rest after the loop has polled its sockets once more
            self.loop.call_soon(self._slice)
        else:
            self._scheduled = False

    async def turn(self, fn: Callable[..., None], *args: Any) -> None:
        """Submit `fn(*args)` and wait until it has run."""
        done = self.loop.create_future()

        def run() -> None:
            try:
                fn(*args)
            finally:
                if not done.done():
                    done.set_result(None)

        self.submit(run)
        await done


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = (
    weakref.WeakKeyDictionary())


def pacer(loop: asyncio.AbstractEventLoop | None = None) -> Pacer:
    """The pacer of `loop` (default: the running loop): one per loop, shared by every
    supervisor on it, since they share its turns."""
    loop = loop or asyncio.get_running_loop()
    p = _pacers.get(loop)
    if p is None:
        p = _pacers[loop] = Pacer(loop)
    return p
