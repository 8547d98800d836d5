"""`tasks.map`'s lanes: at most `concurrency` tasks of a list at once, results in input order.

A lane is its task's `waiter` for the whole map: once per turn of the loop the ready lanes
keep their results and submit their next inputs as one batch (`submit_many`). Nothing but
its Task is made per input (a coroutine and a future were a fifth of the CPU per tiny task).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, cast

from ...jsonrpc import RpcError
from ...taskoptions import TaskOptions
from ...taskviews import TaskFailure, TaskResult
from .durable import TaskJournal
from .model import Task

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .intake import Intake


class Submits(Protocol):
    """What the lanes ask of the task manager."""

    @property
    def journal(self) -> TaskJournal | None: ...

    @property
    def intake(self) -> Intake: ...

    def outcome(self, task: Task, *, decode: bool = False) -> Awaitable[TaskResult]: ...


class _Lane:
    """One lane: the task it waits for (as its `waiter`) and its place in the results."""

    __slots__ = ("i", "run", "settled", "task")

    def __init__(self, run: Lanes) -> None:
        self.run = run
        self.i = -1
        self.task: Task | None = None
        self.settled = True

    def done(self) -> bool:
        return self.settled

    def set_result(self, _: None, /) -> None:
        self.settled = True
        run = self.run  # (its `ended`, written out: this is every task's end)
        run.running -= 1
        if run.stopped:
            if self.task is not None and self.task.out is not None:
                self.task.out.forget()  # (the map was cancelled: nobody takes the values)
            return
        if not run.ready:
            run.loop.call_soon(run.refill)
        run.ready.append(self)


class Lanes:
    def __init__(self, tasks: Submits, agent: str, inputs: Iterator[Any], *,
                 concurrency: int, options: TaskOptions) -> None:
        self.tasks = tasks
        self.agent = agent
        self.todo = inputs
        self.options = options
        self.concurrency = max(1, concurrency)
        self.results: list[TaskResult | None] = []
        self.dropped: list[tuple[int, Task]] = []  # outputs read back from the journal
        self.ready: list[_Lane] = []
        self.running = 0
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.stopped = False  # the map was cancelled or failed: no more submissions

    async def run(self) -> list[TaskResult]:
        try:
            self._next([_Lane(self) for _ in range(self.concurrency)])
            if self.running:
                await self.finished
        finally:
            self.stopped = True
        for i, task in self.dropped:
            self.results[i] = await self.tasks.outcome(task, decode=True)
        return cast(list[TaskResult], self.results)

    def _next(self, lanes: list[_Lane]) -> None:
        """The lanes take their next inputs, as one batch. A refused task, or one ended at
        once, is a result, and its lane takes the input after it."""
        tasks, results, todo = self.tasks, self.results, self.todo
        while lanes:
            batch = list(islice(todo, len(lanes)))
            if not batch:
                return
            base = len(results)
            results.extend([None] * len(batch))
            try:
                made = tasks.intake.submit_many(self.agent, batch, self.options, decoded=True)
            except RpcError as exc:
                made = [exc] * len(batch)
            for k, task in enumerate(made):
                i = base + k
                if isinstance(task, RpcError):
                    results[i] = TaskResult("", "refused", None,
                                            TaskFailure(task.code, task.message), ())
                elif task.ended:
                    self._keep(i, task)
                else:
                    lane = lanes.pop()
                    lane.i, lane.task, lane.settled = i, task, False
                    task.waiter = lane
                    self.running += 1

    def _keep(self, i: int, task: Task) -> None:
        if task.output_dropped:
            self.dropped.append((i, task))
        else:
            self.results[i] = task.result(decode=True)

    def refill(self) -> None:
        """The lanes whose tasks ended keep their results and take next inputs, next loop turn."""
        ready, self.ready = self.ready, []
        if self.stopped:
            return
        results, dropped = self.results, self.dropped
        for lane in ready:
            task = lane.task
            assert task is not None
            lane.task = None
            if task.output_dropped:  # (`_keep`, written out: every task's end)
                dropped.append((lane.i, task))
            else:
                results[lane.i] = task.result(decode=True)
        self._go(ready)

    def _go(self, ready: list[_Lane]) -> None:
        """The ready lanes take their next inputs; the map ends when no lane runs."""
        try:
            journal = self.tasks.journal
            if journal is not None and journal.behind():
                # a journal slower than tasks end must not gather a backlog in memory:
                # these lanes go on once it has caught up
                self.running += len(ready)
                self.loop.create_task(self._after_commit(journal, ready))
                return
            self._next(ready)
        except BaseException as exc:
            self._fail(exc)
            return
        if not self.running and not self.finished.done():
            self.finished.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.stopped = True
        if not self.finished.done():
            self.finished.set_exception(exc)

    async def _after_commit(self, journal: TaskJournal, ready: list[_Lane]) -> None:
        try:
            await journal.committed()
        except Exception as exc:
            self._fail(exc)
            return
        self.running -= len(ready)
        if not self.stopped:
            self._go(ready)
