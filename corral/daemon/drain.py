"""A stop that loses no work: the daemon drains before its agents stop
(docs/operations.md, "Stopping: drain").

A task still running at its agent's `drain_timeout` is handed over (its attempt lost to
the stop, so that the journal gives it to the next daemon). A second stop request cuts
the drain short (`cut`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..methods import DrainedTask, DrainReport
from ..supervisor.tasks import AttemptEnded
from ..supervisor.tasks.dispatch import CANCEL_GRACE
from ..text import plural
from ..timeouts import within

if TYPE_CHECKING:
    from ..supervisor.tasks import Task, TaskManager
    from ..supervisor.tasks.host import AgentLike

HELD = "the daemon is stopping (draining)"


class Drain:
    def __init__(self, tasks: TaskManager, agents: Mapping[str, AgentLike], default: float,
                 report: Callable[[str], None], changed: Callable[[], None]) -> None:
        self.tasks = tasks
        self.agents = agents
        self.default = default  # [supervisor] drain_timeout
        self.report = report
        self.changed = changed  # the status line is stale (sd_notify STATUS=)
        self.left: dict[str, Task] = {}  # running tasks still waited on
        self.until = 0.0  # loop time the drain ends by, at the latest
        self._wake = asyncio.Event()
        self._cut = False

    def timeout_of(self, agent: str) -> float:
        a = self.agents.get(agent)
        own = a.spec.drain_timeout if a is not None else None
        return self.default if own is None else own

    def _grace_of(self, agent: str) -> float:
        a = self.agents.get(agent)
        return getattr(a.spec, "cancel_grace", CANCEL_GRACE) if a is not None else 0.0

    def cut(self) -> None:
        """Stop waiting: what still runs is ended by the stop (and handed over)."""
        self._cut = True
        self._wake.set()

    def progress(self) -> str:
        """`draining 3 tasks (up to 25 s)`: for the status line, `corral status`, STATUS=."""
        left = max(0.0, self.until - asyncio.get_running_loop().time())
        return f"draining {plural(len(self.left), 'task')} (up to {left:.0f} s)"

    def _ended(self, e: AttemptEnded) -> None:
        if e.task.id in self.left:
            self._wake.set()

    async def run(self) -> DrainReport:
        tasks = self.tasks
        tasks.hold(HELD)
        loop = asyncio.get_running_loop()
        start = loop.time()
        running = tasks.running_tasks()
        deadline = {t.id: start + self.timeout_of(t.agent) for t in running}
        self.left = {t.id: t for t in running if deadline[t.id] > start}
        grace: dict[str, float] = {}
        self.until = start + max((self.timeout_of(t.agent) + self._grace_of(t.agent)
                                  for t in self.left.values()), default=0.0)
        if self.left and not self._cut:
            self.report(f"draining: no new task goes to a worker; "
                        f"{plural(len(self.left), 'running task')} may finish within "
                        f"{self.until - start:.0f} s (drain_timeout, then cancel_grace "
                        "for a task cancelled at its end)")
        ended = tasks.stream.subscribe(self._ended, AttemptEnded)
        try:
            while self.left and not self._cut:
                now = loop.time()
                for tid, task in list(self.left.items()):
                    if not task.running or (tid in grace and now >= grace[tid]):
                        del self.left[tid]  # ended, handed over, or the stop's now
                    elif tid not in grace and now >= deadline[tid]:
                        tasks.dispatch.hand_over(task, f"not finished within the drain "
                                                       f"({self.timeout_of(task.agent):g} s "
                                                       "drain_timeout): daemon stopping")
                        grace[tid] = now + self._grace_of(task.agent)
                self.changed()
                if not self.left:
                    break
                wake = min(grace.get(t, deadline[t]) for t in self.left)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await within(self._wake.wait(), max(0.0, wake - loop.time()))
        finally:
            tasks.stream.unsubscribe(ended)
            self.left = {}
        handed = sum(1 for t in running if t.queued)
        drained = DrainReport(seconds=round(loop.time() - start, 3),
                              tasks=[DrainedTask(task_id=t.id, agent=t.agent,
                                             status=str(t.status)) for t in running],
                          # the others waiting (accepted before the drain, or during it)
                          waiting=tasks.waiting() - handed if tasks.journal is not None
                          else 0,
                          cut_short=self._cut,
                          suspended=sum(1 for t in tasks.active.values() if t.suspended)
                          + len(tasks.suspensions.compact))
        if running:
            self.report(f"drained in {drained.seconds:.1f} s: {drained.summary()}")
        return drained
