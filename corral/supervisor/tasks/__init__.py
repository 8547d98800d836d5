"""Tasks: work given to agents, each ending in exactly one terminal outcome. Each module's
job is named in docs/architecture.md; manager.py's TaskManager composes them.

Its names are its modules', each module imported when one of its names is first asked
for, as corral.supervisor's are: a process that needs one part (the trace exporter, a
record's spans) does not import the manager and every part it composes."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...taskviews import (
        Attempt,
        ModelUsage,
        TaskFailure,
        TaskInfo,
        TaskResult,
        TaskSummary,
        Usage,
    )
    from .budget import Budget, Budgets
    from .call import Call
    from .durable import TaskJournal, unknown_cursor
    from .ids import is_task_id, new_id
    from .interceptors import Interceptors, TaskInterceptor
    from .manager import TaskManager
    from .model import (
        LOST_IN_RESTART,
        AttemptEnded,
        CompactTask,
        Task,
        TaskFinished,
        TaskProgress,
        TaskRecord,
        Unfinished,
    )
    from .payload import Output, encode_input, raw_output_of
    from .queue import LocalQueue, Queue
    from .retention import KEEP_FINISHED, KEEP_FINISHED_BYTES
    from .taskmachine import AT_MOST_ONCE_NOTE, ON_WORKER, TERMINAL, TaskStatus
    from .waitclock import WaitClock

# each name's module (corral.taskviews' given as "...taskviews")
MODULES: dict[str, tuple[str, ...]] = {
    "...taskviews": ("Attempt", "ModelUsage", "TaskFailure", "TaskInfo", "TaskResult",
                     "TaskSummary", "Usage"),
    ".budget": ("Budget", "Budgets"),
    ".call": ("Call",),
    ".durable": ("TaskJournal", "unknown_cursor"),
    ".ids": ("is_task_id", "new_id"),
    ".interceptors": ("Interceptors", "TaskInterceptor"),
    ".manager": ("TaskManager",),
    ".model": ("LOST_IN_RESTART", "AttemptEnded", "CompactTask", "Task", "TaskFinished",
               "TaskProgress", "TaskRecord", "Unfinished"),
    ".payload": ("Output", "encode_input", "raw_output_of"),
    ".queue": ("LocalQueue", "Queue"),
    ".retention": ("KEEP_FINISHED", "KEEP_FINISHED_BYTES"),
    ".taskmachine": ("AT_MOST_ONCE_NOTE", "ON_WORKER", "TERMINAL", "TaskStatus"),
    ".waitclock": ("WaitClock",),
}
_MODULE_OF = {name: module for module, names in MODULES.items() for name in names}

# (a list mypy reads: the names it may be asked for)
__all__ = [
    "AT_MOST_ONCE_NOTE",
    "KEEP_FINISHED",
    "KEEP_FINISHED_BYTES",
    "LOST_IN_RESTART",
    "ON_WORKER",
    "TERMINAL",
    "Attempt",
    "AttemptEnded",
    "Budget",
    "Budgets",
    "Call",
    "CompactTask",
    "Interceptors",
    "LocalQueue",
    "ModelUsage",
    "Output",
    "Queue",
    "Task",
    "TaskFailure",
    "TaskFinished",
    "TaskInfo",
    "TaskInterceptor",
    "TaskJournal",
    "TaskManager",
    "TaskProgress",
    "TaskRecord",
    "TaskResult",
    "TaskStatus",
    "TaskSummary",
    "Unfinished",
    "Usage",
    "WaitClock",
    "encode_input",
    "is_task_id",
    "new_id",
    "raw_output_of",
    "unknown_cursor",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
