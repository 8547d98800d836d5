"""Sending streams to a control-socket client that may not be reading: a follower's items
(logs, events) wait in the follower's bounded queue while the client's socket is full,
and the client is told how much it missed; updates where only the newest matters (task
progress) are coalesced, the newest winning."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ..supervisor.followers import Follower

if TYPE_CHECKING:
    from .caller import Channel

T = TypeVar("T")

# a follow's items sent at a turn of the loop, at most (a log line, an event each)
FOLLOW_BATCH = 500
# a task's progress reports kept, each one, before its client is told it was accepted,
# and their messages' characters (a worker's string, else bounded by its line alone)
HELD_MAX = 100
HELD_CHARS = 1 << 20


async def drain(c: Channel, follower: Follower[T], missed_method: str,
                send_some: Callable[[], None]) -> NoReturn:
    """Send a follower's items to a client until the client goes away."""
    while True:
        await follower.wakeup.wait()
        follower.wakeup.clear()
        while follower.queue or follower.missed:
            await c.writable.wait()
            if follower.missed:
                c.notify(missed_method, {"count": follower.missed})
                follower.missed = 0
            send_some()


class Latest:
    """Notifications of which only the newest matters. While the client's socket is full
    each one replaces the one not yet sent, and the one finally sent carries how many it
    replaced (`coalesced`): the daemon holds one per stream, whatever the client does.
    A stream made `held` keeps its updates until `release`: a task's first reports may
    come (from its worker, or another node) before its client is told it was accepted."""

    def __init__(self, c: Channel, method: str, *, held: bool = False) -> None:
        self.c = c
        self.method = method
        self.held = held
        self.early: list[dict[str, Any]] = []
        self.early_chars = 0
        self.pending: dict[str, Any] | None = None
        self.replaced = 0
        self._flush: asyncio.Future[None] | None = None

    def send(self, params: dict[str, Any]) -> None:
        if self.held:
            # each kept, for a client that shows every step, up to bounds past which the
            # newest replaces the last kept
            message = params.get("message")
            chars = len(message) if isinstance(message, str) else 0
            if len(self.early) < HELD_MAX and self.early_chars + chars <= HELD_CHARS:
                self.early.append(params)
            elif self.early:
                self.early[-1] = params
                self.replaced += 1
            else:
                self.early.append(params)  # the first alone, whatever its size
            self.early_chars += chars
            return
        if self.pending is None and self.c.writable.is_set():
            self.c.notify(self.method, params)
            return
        if self.pending is not None:
            self.replaced += 1
        self.pending = params
        if self._flush is None:
            self._flush = asyncio.ensure_future(self._send_when_writable())

    def release(self) -> None:
        """What the stream held goes out now, in order, as far as the client's socket has
        room; the newest of it (carrying what it replaced) when the client reads."""
        self.held = False
        early, self.early = self.early, []
        if not early:
            return
        for params in early[:-1]:
            self.send(params)
        if self.pending is not None:
            self.replaced += 1
        self.pending = early[-1]
        if self._flush is None:
            if self.c.writable.is_set():
                self._send_pending()
            else:
                self._flush = asyncio.ensure_future(self._send_when_writable())

    async def _send_when_writable(self) -> None:
        await self.c.writable.wait()
        self._flush = None
        self._send_pending()

    def _send_pending(self) -> None:
        if self.pending is not None:
            params, self.pending = self.pending, None
            n, self.replaced = self.replaced, 0
            self.c.notify(self.method, {**params, "coalesced": n} if n else params)

    def close(self) -> None:
        """The stream is over: the newest update still goes out (one message, whatever
        the client's socket holds), before whatever ends the stream; a stream still held
        (its task never accepted) says nothing."""
        if self.held:
            self.early.clear()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._send_pending()
