"""Where tasks are made durable: the engine's port to a journal (the daemon's is SQLite,
corral.daemon.taskjournal); the engine works without one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...taskoptions import NO_FILTERS, TaskFilters
from ...taskviews import TaskInfo, TaskSummary
from .model import Task, TaskRecord

# whether a task's record is the asker's, from its agent and the tenant that agent was of
# when the task was accepted (the daemon's Caller.sees_record)
Sees = Callable[[str, str | None], bool]


def unknown_cursor(task_id: str) -> RpcError:
    """A page's cursor (`before`) that names no task kept: 404, as elsewhere."""
    return RpcError(jsonrpc.NOT_FOUND, f"no such task: {task_id} (the cursor `before` "
                                       "names no task kept: pruned, or never accepted; "
                                       "list again from the newest)")


class TaskJournal(Protocol):
    """`write` is called on the loop at a task's acceptance and each change; it must not block.
    The engine may drop a finished task's input and output once `write` has returned."""

    def write(self, task: Task) -> None: ...

    def behind(self) -> bool:
        """True when writes are waiting in memory past the journal's bound: callers that
        can wait (the Python API's `run`) then wait for `committed()`."""

    def committed(self) -> Awaitable[None]:
        """Done once everything written so far is durable; raises if it cannot be."""

    async def load(self, task_id: str) -> TaskInfo | None: ...

    def record(self, task_id: str) -> TaskRecord | None:
        """A task's committed row whole, as a restart takes it back (on the loop)."""

    def knows(self, task_id: str) -> bool:
        """Whether a task of this id was ever written here, committed or waiting to be
        (on the loop)."""

    async def query(self, *, agent: str | None, status: str | None, since: float | None,
                    limit: int, before: str | None = None,
                    sees: Sees | None = None, filters: TaskFilters = NO_FILTERS
                    ) -> list[TaskSummary]:
        """Tasks created at or after `since`, oldest first, the newest `limit`; with
        `before` (a task id), those that arrived before it; with `sees`, those it admits
        (another reads as absent, the cursor too). `unknown_cursor` when `before` is."""

