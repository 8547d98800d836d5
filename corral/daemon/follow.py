"""Sending a follower's items (logs, events) to a control-socket client: stops reading
the follower's queue while the client's socket is full, and tells the client how much
it missed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

from ..supervisor.follow import Follower

if TYPE_CHECKING:
    from .control import Connection

T = TypeVar("T")


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
