"""Tasks that may not start before a time (`not_before`: a delay, or a retry's backoff),
behind one timer, out of the Queue while they wait (no place, no slot).

Times are wall-clock (a journal keeps them across a restart): a task found early when the
timer fires waits for a timer set again.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

from .model import Task

# a timer may fire a little early as the wall clock tells it: what is due this soon goes
RESOLUTION = 0.001


class Delays:
    __slots__ = ("_at", "_due", "_heap", "_order", "_per_agent", "_timer", "_waiting")

    def __init__(self, due: Callable[[Task], None]) -> None:
        self._due = due
        self._heap: list[tuple[float, int, Task]] = []
        self._order = itertools.count()
        self._waiting: dict[str, Task] = {}  # by id: the heap's entries still meant
        self._per_agent: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = float("inf")  # the wall time the timer is set for

    def add(self, task: Task) -> None:
        at = task.not_before
        assert at is not None
        self.remove(task)
        self._waiting[task.id] = task
        self._per_agent[task.agent] = self._per_agent.get(task.agent, 0) + 1
        heapq.heappush(self._heap, (at, next(self._order), task))
        if at < self._at:
            self._arm(at)

    def remove(self, task: Task) -> bool:
        """Whether it was waiting; it waits no longer (its heap entry is skipped later)."""
        if self._waiting.pop(task.id, None) is None:
            return False
        n = self._per_agent[task.agent] - 1
        if n:
            self._per_agent[task.agent] = n
        else:
            del self._per_agent[task.agent]
        return True

    def holds(self, task: Task) -> bool:
        return task.id in self._waiting

    def count(self, agent: str) -> int:
        return self._per_agent.get(agent, 0)

    def of(self, agent: str) -> list[Task]:
        """The agent's delayed tasks, the soonest first."""
        return sorted((t for t in self._waiting.values() if t.agent == agent),
                      key=lambda t: t.not_before or 0.0)

    def __len__(self) -> int:
        return len(self._waiting)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - time.time()),
                                                            self._fire)

    def _fire(self) -> None:
        self._timer, self._at = None, float("inf")
        now = time.time() + RESOLUTION
        heap = self._heap
        due: list[Task] = []
        while heap:
            at, _, task = heap[0]
            if self._waiting.get(task.id) is not task or task.not_before != at:
                heapq.heappop(heap)  # cancelled, or added again for another time
                continue
            if at > now:
                self._arm(at)
                break
            heapq.heappop(heap)
            self.remove(task)
            due.append(task)
        for task in due:
            self._due(task)
