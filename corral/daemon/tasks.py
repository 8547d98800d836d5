"""A task's way through the daemon: accept -> commit -> acknowledge -> outcome.

The one path every front end calls to run a task, so the durability rule holds for all of
them: a task is acknowledged (its id told to the caller) only once the journal holds it,
and while the journal cannot write new tasks are refused before they reach an agent. A
task that ended before its journal write was known to fail ran, and its outcome is the
answer: refusing it would have the client run it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError, visible
from ..supervisor.core import Supervisor
from ..supervisor.tasks import (
    LOST_IN_RESTART,
    TERMINAL,
    TaskFinished,
    TaskInfo,
    TaskProgress,
    TaskRecord,
    TaskStatus,
    TaskSummary,
    is_task_id,
)
from ..text import plural
from .caller import Channel

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode
from .follow import Latest
from .store import row_limit
from .taskjournal import TaskJournalDB, TaskJournalError

STATUSES = frozenset(TaskStatus)  # what `tasks.list` may filter on


class TaskDesk:
    """Where tasks are handed in and asked about. Until the journal's unfinished tasks
    are back in the engine (`recover`), every call waits: a task could otherwise be
    answered from a stale journal row, or accepted out of order."""

    def __init__(self, sup: Supervisor, journal: TaskJournalDB | None,
                 report: Callable[[str], None]) -> None:
        self.sup = sup
        self.journal = journal
        self.report = report
        self.recovered = asyncio.Event()
        # with [cluster]: tasks go to the cluster unless submitted `local` (docs/cluster.md)
        self.cluster: ClusterNode | None = None

    @property
    def refusing(self) -> str | None:
        """Why new tasks are refused now (the journal cannot write), or None."""
        return self.journal.refusing if self.journal is not None else None

    def recover(self, records: list[TaskRecord]) -> None:
        """Finish the story of every task the previous daemon accepted (DESIGN section 8),
        then open the desk. Called with no await since the agents were added, so no task
        is accepted before the journal's are back, queued after theirs."""
        tasks = self.sup.tasks.restore(records)
        if tasks:
            was_running = {r.task_id for r in records if r.status == "running"}
            lost = sum(1 for t in tasks if t.status == "lost")
            retried = sum(1 for t in tasks if t.id in was_running and t.status != "lost")
            self.report(f"task journal: {plural(len(tasks), 'unfinished task')} recovered: "
                        f"{len(tasks) - len(was_running)} queued again, "
                        f"{plural(retried, 'running task')} retried, {lost} lost "
                        f"({LOST_IN_RESTART})")
        self.recovered.set()

    async def run(self, p: m.TasksRun, channel: Channel) -> Any:
        await self.recovered.wait()
        if self.cluster is not None and not p.local:
            # progress from whichever node runs it, coalesced for a slow reader as below
            latest = Latest(channel, "task.progress")
            try:
                return await self.cluster.desk.run(self._held_to_tenant(p), channel.notify,
                                                   latest.send)
            finally:
                latest.close()
        tasks = self.sup.tasks
        if self.refusing is not None:
            # refused before it reaches an agent: a task that cannot be recorded never runs
            raise RpcError(jsonrpc.INTERNAL_ERROR, f"{self.refusing}; the task was not "
                                                   "accepted")
        if tasks.held is not None and self.journal is None:
            # nothing would keep it for the next daemon (decision 164)
            raise RpcError(jsonrpc.REFUSED, f"refused: {tasks.held}, and without a task "
                                            "journal (task_journal = false) a task accepted "
                                            "now would be lost: submit it again once the "
                                            "daemon is back")
        task = tasks.submit(p.agent, p.input, timeout=p.timeout, priority=p.priority)

        # a caller that does not read gets the newest progress, never a growing backlog
        progress = Latest(channel, "task.progress")

        def watch(e: TaskProgress | TaskFinished) -> None:
            if isinstance(e, TaskProgress):
                progress.send({"task_id": task.id, **e.progress})

        watching = None if p.detach else task.watch(watch)
        try:
            try:
                await tasks.committed()  # in the journal before it is acknowledged
            except TaskJournalError as exc:
                # the failure is known only when the write that held the task fails, and
                # the task may have reached an agent meanwhile: one still queued or
                # running is cancelled and refused; one that has already ended ran, and
                # its outcome is the answer (its row is written when the journal can)
                if task.status not in TERMINAL:
                    tasks.cancel(task.id)
                    raise RpcError(jsonrpc.INTERNAL_ERROR,
                                   f"{exc}; the task was not accepted") from None
            if p.detach:
                return {"task_id": task.id, "status": task.status}
            # a caller that loses the connection (a daemon restart) waits again by this id
            channel.notify("task.accepted", {"task_id": task.id})
            # a caller that goes away cancels this wait, not the task
            await asyncio.shield(task.done)
        finally:
            task.unwatch(watching)
            progress.close()
        if self.refusing is None:  # else written when it can be
            with contextlib.suppress(TaskJournalError):  # logged by the journal; it stands
                await tasks.committed()
        return await tasks.outcome(task)

    def _held_to_tenant(self, p: m.TasksRun) -> m.TasksRun:
        """A cluster task of an agent this node runs, held to its tenant's task quotas at
        submission, as a local one is: refused past rate_per_minute (this node's count)
        or max_queue (the tenant's tasks waiting on this node), its timeout capped at
        max_task_seconds. (An agent this node does not run has no tenant here.)"""
        agent = self.sup.agents.get(p.agent)
        if agent is None:
            return p
        tenancy = self.sup.tenancy
        refused = tenancy.task_refusal(agent, self.sup.tasks.queue.depth)
        if refused is not None:
            raise refused
        asked = p.timeout if p.timeout is not None else agent.spec.task_timeout
        capped = tenancy.timeout(agent, asked)
        if capped == asked:
            return p
        return msgspec.structs.replace(p, timeout=capped)

    async def get(self, task_id: str, *, wait: bool) -> TaskInfo | m.TaskInfo:
        await self.recovered.wait()
        if self.cluster is not None:
            # a cluster task's record is the truth, wherever it ran; one this node ran is
            # in its engine too, but its record has every attempt
            found = await self.cluster.task(task_id, wait=wait)
            if found is not None:
                return found
        return await self.sup.tasks.info(task_id, wait=wait)

    async def input_of(self, task_id: str) -> msgspec.Raw | None:
        """A task's input as it was sent: the engine's while the task may run, else the
        journal's (kept with its row); None when neither has it."""
        task = self.sup.tasks.active.get(task_id)
        if task is not None:
            return task.input
        return await self.journal.load_input(task_id) if self.journal is not None else None

    async def list(self, p: m.TasksList, sees: Callable[[str], bool] | None = None
                   ) -> tuple[list[TaskSummary] | list[m.TaskSummary], str | None]:
        """A page of tasks, newest last, and the cursor of the page before it (older
        tasks), or None when there is none; with `sees`, of the agents it admits."""
        await self.recovered.wait()
        if p.agent is not None and self.journal is None and (self.cluster is None
                                                              or p.local):
            self.sup.agent(p.agent)
        if p.status is not None and p.status not in STATUSES:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"no such status: {p.status} (one of "
                                                   f"{', '.join(sorted(STATUSES))})")
        if p.before is not None and not is_task_id(p.before):
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"invalid params: before is a task id (the `next` of a page), "
                           f"not {visible(p.before)}")
        since = time.time() - p.since if p.since is not None else None
        limit = row_limit(p.limit)
        if limit == 0:
            return [], None
        if self.cluster is not None and not p.local:
            return await self.cluster.desk.list(p, since, limit, sees)
        # one more than the page: whether older tasks are left, without counting them
        page = await self.sup.tasks.query(agent=p.agent, status=p.status, since=since,
                                          limit=limit + 1, before=p.before, sees=sees)
        if len(page) <= limit:
            return page, None
        page = page[1:]
        return page, page[0].task_id

    async def cancel(self, task_id: str) -> TaskInfo | m.TaskInfo:
        await self.recovered.wait()
        if self.cluster is not None:
            found = await self.cluster.cancel(task_id)
            if found is not None:
                return found
        return self.sup.tasks.cancel(task_id).info()
