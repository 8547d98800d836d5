"""Where accepted tasks wait for a replica: the `Queue` protocol, and `LocalQueue`, the
priority heap of one process.

Order: higher priority first, then arrival. A task lost with its worker and retried goes
back to its arrival place, before every task of its priority that arrived after it. The
dispatcher takes from the queue only when a replica of the agent has a free slot, so a
queue never holds a task it could not place; another implementation (one a cluster
shares) keeps the same contract.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Protocol

from .model import Task


class Queue(Protocol):
    """The tasks waiting for each agent, in dispatch order."""

    def put(self, task: Task) -> None:
        """A task accepted for `task.agent` waits its turn."""

    def take(self, agent: str) -> Task | None:
        """The next task for a replica of `agent` that has a free slot, out of the queue;
        None when none waits."""

    def requeue(self, task: Task) -> None:
        """A task that lost its attempt waits again, in front of those that arrived after
        it."""

    def remove(self, task: Task) -> bool:
        """Take a waiting task out (it was cancelled); False if it was not waiting."""

    def depth(self, agent: str) -> int:
        """How many tasks wait for `agent`."""

    def recover(self, tasks: Iterable[Task]) -> None:
        """The waiting tasks a journal gave back after a restart, in their order."""

    def position(self, task: Task) -> int | None:
        """Its place among its agent's waiting tasks (1: the next to start), None when it
        does not wait here."""


class LocalQueue:
    """One heap per agent of (-priority, seq, task): `seq` is the task's arrival in this
    process and unique, so the order is total and two Tasks are never compared."""

    __slots__ = ("_heaps",)

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, int, Task]]] = {}

    def put(self, task: Task) -> None:
        heap = self._heaps.get(task.agent)
        if heap is None:
            heap = self._heaps[task.agent] = []
        heapq.heappush(heap, (-task.priority, task.seq, task))

    def take(self, agent: str) -> Task | None:
        heap = self._heaps.get(agent)
        if not heap:
            return None
        return heapq.heappop(heap)[2]

    # a retried task keeps its arrival number: that is its place
    requeue = put

    def remove(self, task: Task) -> bool:
        heap = self._heaps.get(task.agent)
        if heap is None:
            return False
        kept = [e for e in heap if e[2] is not task]
        if len(kept) == len(heap):
            return False
        heapq.heapify(kept)
        self._heaps[task.agent] = kept
        return True

    def depth(self, agent: str) -> int:
        heap = self._heaps.get(agent)
        return len(heap) if heap is not None else 0

    def recover(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.put(task)

    def position(self, task: Task) -> int | None:
        heap = self._heaps.get(task.agent) or []
        key = next(((p, s) for p, s, t in heap if t is task), None)
        if key is None:
            return None
        return 1 + sum(1 for p, s, _ in heap if (p, s) < key)
