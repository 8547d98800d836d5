"""Where accepted tasks wait for a replica: the `Queue` protocol, and `LocalQueue`, the
priority lines of one process (docs/tasks.md#the-queue). The dispatcher takes from a queue
only when a replica has a free slot: it never holds a task it cannot place."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from .model import Task


class Queue(Protocol):
    """The tasks waiting for each agent, in dispatch order."""

    def put(self, task: Task) -> None: ...

    def take(self, agent: str) -> Task | None:
        """The next task for a replica of `agent` that has a free slot, out of the queue."""

    def requeue(self, task: Task) -> None:
        """A task that lost its attempt waits again, at its arrival place."""

    def remove(self, task: Task) -> bool:
        """Take a waiting task out (it was cancelled); False if it was not waiting."""

    def depth(self, agent: str) -> int: ...

    def recover(self, tasks: Iterable[Task]) -> None:
        """The waiting tasks a journal gave back after a restart, in their order."""

    def position(self, task: Task) -> int | None:
        """Its place among its agent's waiting tasks (1: the next to start)."""


class _Lines:
    """One agent's waiting tasks: a line per priority (highest first), and the count."""

    __slots__ = ("by_priority", "count")

    def __init__(self) -> None:
        self.by_priority: dict[int, deque[Task]] = {}
        self.count = 0


def _by_seq(task: Task) -> int:
    return task.seq


class LocalQueue:
    """A line per agent and priority, in arrival order (`seq`). (A heap of (-priority,
    seq, task) gave the same order at a log's worth of tuple comparisons per task.)"""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: dict[str, _Lines] = {}

    def put(self, task: Task) -> None:
        lines = self._lines.get(task.agent)
        if lines is None:
            lines = self._lines[task.agent] = _Lines()
        line = lines.by_priority.get(task.priority)
        if line is None:
            line = lines.by_priority[task.priority] = deque()
            if len(lines.by_priority) > 1:  # a new priority: the lines in order again
                lines.by_priority = dict(sorted(lines.by_priority.items(), reverse=True))
        if not line or line[-1].seq < task.seq:
            line.append(task)
        else:  # one that arrived before the last (a retry): back in its place
            line.insert(bisect.bisect(line, task.seq, key=_by_seq), task)
        lines.count += 1

    def take(self, agent: str) -> Task | None:
        lines = self._lines.get(agent)
        if lines is None or not lines.count:
            return None
        by_priority = lines.by_priority
        priority = next(iter(by_priority))
        line = by_priority[priority]
        task = line.popleft()
        lines.count -= 1
        if not line:
            del by_priority[priority]
        return task

    # a retried task keeps its arrival number: that is its place
    requeue = put

    def remove(self, task: Task) -> bool:
        lines = self._lines.get(task.agent)
        line = lines.by_priority.get(task.priority) if lines is not None else None
        if lines is None or line is None:
            return False
        for i, t in enumerate(line):
            if t is task:
                del line[i]
                lines.count -= 1
                if not line:
                    del lines.by_priority[task.priority]
                return True
        return False

    def depth(self, agent: str) -> int:
        lines = self._lines.get(agent)
        return lines.count if lines is not None else 0

    def recover(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.put(task)

    def position(self, task: Task) -> int | None:
        lines = self._lines.get(task.agent)
        if lines is None:
            return None
        ahead = 0
        for line in lines.by_priority.values():  # highest priority first
            for t in line:
                if t is task:
                    return ahead + 1
                ahead += 1
        return None

    def forget(self, agent: str) -> None:
        """The agent was removed and its waiting tasks taken: its empty lines go too (a
        task still waiting keeps them). Not at each emptying: a tiny task's put and take
        would make them anew each time."""
        lines = self._lines.get(agent)
        if lines is not None and not lines.count:
            del self._lines[agent]
