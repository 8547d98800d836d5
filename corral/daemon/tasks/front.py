"""What the command handlers ask of tasks, whichever front the daemon chose at start-up
(local.py, or clustered.py with [cluster]): each method one result type."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

import msgspec

from ... import jsonrpc
from ... import methods as m
from ...jsonrpc import RpcError, visible
from ...supervisor.tasks import TaskStatus, Unfinished, is_task_id
from ...supervisor.tasks.durable import Sees as Sees
from ...taskviews import TaskInfo, TaskResult, TaskSummary
from ..caller import Channel
from ..store import row_limit

STATUSES = frozenset(TaskStatus)  # what `tasks.list` may filter on
Page = tuple[list[TaskSummary], str | None]  # a page, and the cursor of the one before


class TaskFront(Protocol):
    """Where tasks are handed in and asked about. Until the journal's unfinished tasks
    are back in the engine (`recover`), every call waits: a task could otherwise be
    answered from a stale journal row, or accepted out of order."""

    @property
    def refusing(self) -> str | None:
        """Why new tasks are refused now (the journal cannot write), or None."""

    def recover(self, records: list[Unfinished],
                reattached: Callable[[str], Awaitable[None]] | None = None) -> None:
        """`reattached`: in an upgrade's new image, until a running task it carries is
        back in the engine (a wait for one waits for it)."""

    async def submit(self, p: m.TasksSubmit, channel: Channel, holder: str | None
                     ) -> m.TaskAccepted:
        """Accept a task: its id once it is durable (journal, or Redis); with `wait`,
        its outcome too if it ends within the wait. `holder`: whose its idempotency key
        is (`Caller.holder`, said by every door; None: the daemon's own, its tenant's)."""

    async def run(self, p: m.TasksRun, channel: Channel, holder: str | None) -> TaskResult:
        """Accept a task and answer its outcome (`task.accepted`, then `task.progress`
        notifications on `channel` meanwhile); `holder` as `submit`'s."""

    async def get(self, task_id: str, *, wait: bool) -> TaskInfo: ...

    def holds(self, task_id: str) -> bool:
        """Whether this node's engine holds the task in memory: an id of no team's call
        (both are made by one clock), so not looked for among them."""

    async def input_of(self, task_id: str) -> msgspec.Raw | None:
        """A task's input as it was sent, where it is kept; None when not."""

    async def list(self, p: m.TasksList, sees: Sees | None = None) -> Page:
        """A page of tasks, newest last, and the cursor of the page before it, or None;
        with `sees`, those it admits."""

    async def cancel(self, task_id: str) -> TaskInfo: ...


def listing_window(p: m.TasksList) -> tuple[float | None, int]:
    return page_window(p.status, p.before, p.since, p.limit, STATUSES, "task")


def page_window(status: str | None, before: str | None, since: float | None,
                limit: int, statuses: Collection[str], kind: str
                ) -> tuple[float | None, int]:
    """A page's params of a listing of tasks or of what has task ids (runs) checked alike:
    a status of `statuses`, a cursor that is an id; -> since as wall time, the size."""
    if status is not None and status not in statuses:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"no such status: {status} (one of "
                                               f"{', '.join(sorted(statuses))})")
    if before is not None and not is_task_id(before):
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"invalid params: before is a {kind} id (the `next` of a page), "
                       f"not {visible(before)}")
    return (time.time() - since if since is not None else None), row_limit(limit)


def replayed(info: TaskInfo) -> m.TaskAccepted:
    """tasks.submit's answer with an idempotency key sent before: the first task, with its
    outcome once it has ended."""
    answer = accepted(info.task_id, info.status,
                      None if info.finished is None else info.outcome())
    answer.replayed = True
    return answer


def accepted(task_id: str, status: str, outcome: TaskResult | None = None
             ) -> m.TaskAccepted:
    """tasks.submit's answer: with the outcome, when the task ended within its wait."""
    if outcome is None:
        return m.TaskAccepted(task_id=task_id, status=status)
    return m.TaskAccepted(task_id=task_id, status=outcome.status, output=outcome.output,
                          error=outcome.error, attempts=list(outcome.attempts))
