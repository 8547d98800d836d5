"""Tasks that may not start before a time (`not_before`: a delay, or a retry's backoff),
on a wall clock's timers (waitclock.py: one loop timer behind them all), out of the Queue
while they wait (no place, no slot). Times are wall-clock: a journal keeps them across a
restart."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .model import Task
from .waitclock import WaitClock, WaitTimer


class Delays:
    __slots__ = ("_clock", "_due", "_per_agent", "_waiting")

    def __init__(self, due: Callable[[Task], None]) -> None:
        self._due = due
        self._clock = WaitClock()  # (the wall's, never the manual clock of a person's waits)
        self._waiting: dict[str, tuple[Task, WaitTimer]] = {}  # by id
        self._per_agent: dict[str, int] = {}

    def add(self, task: Task) -> None:
        at = task.not_before
        assert at is not None
        self.remove(task)
        clock = self._clock
        self._waiting[task.id] = (task, clock.call_later(at - clock.time(),
                                                         partial(self._fired, task)))
        self._per_agent[task.agent] = self._per_agent.get(task.agent, 0) + 1

    def remove(self, task: Task) -> bool:
        """Whether it was waiting; it waits no longer."""
        held = self._waiting.pop(task.id, None)
        if held is None:
            return False
        held[1].cancel()
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
        return sorted((t for t, _ in self._waiting.values() if t.agent == agent),
                      key=lambda t: t.not_before or 0.0)

    def __len__(self) -> int:
        return len(self._waiting)

    def _fired(self, task: Task) -> None:
        self.remove(task)
        self._due(task)
