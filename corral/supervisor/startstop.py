"""Starting and stopping many replicas at once, paced (pacing.py): a thousand begun in
one turn of the loop stalled it for a second."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .pacing import BATCH, pacer

if TYPE_CHECKING:
    from .process_replica import ProcessReplica
    from .replica import Replica


class Starter:
    """The starts of one start_all still waiting for their turn."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def start(self, r: Replica) -> None:
        if not self.cancelled:
            r.start(by_hand=True)


def start_all(replicas: list[Replica]) -> Starter | None:
    """Start these replicas: BATCH now, the rest BATCH per later turn of the loop; returns
    what cancels those still waiting (None when none are)."""
    for r in replicas[:BATCH]:
        r.start(by_hand=True)
    if len(replicas) <= BATCH:
        return None
    starter = Starter()
    p = pacer()
    for r in replicas[BATCH:]:
        p.submit(starter.start, r)
    return starter


async def stop_all(replicas: Iterable[ProcessReplica], reason: str, *,
                   graceful: bool = True) -> None:
    """Stop these replicas concurrently; returns when all are down (no waits add up). Each
    stop's first steps take a place in the loop's queue of paced work, as do the exits
    that follow, so a mass stop runs BATCH steps per turn."""
    replicas = list(replicas)
    p = pacer()
    for r in replicas:
        p.submit(functools.partial(r.begin_stop, reason, graceful=graceful))
    await p.turn(lambda: None)  # every stop begun (in order: the queue is FIFO)
    await asyncio.gather(*(r.stopped() for r in replicas))


async def start_each(replicas: Iterable[Replica]) -> None:
    """Start these replicas by hand, paced as stop_all's stops are (a stop asked after
    them still comes after them); returns once every start has begun."""
    p = pacer()
    for r in replicas:
        p.submit(functools.partial(r.start, by_hand=True))
    await p.turn(lambda: None)
