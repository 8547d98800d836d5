"""Tasks: work given to agents, each ending in exactly one terminal outcome. Each module's
job is named in docs/architecture.md; manager.py's TaskManager composes them.

Its names are its modules', each module imported when one of its names is first asked
for, as corral.supervisor's are: a process that needs one part (the trace exporter, a
record's spans) does not import the manager and every part it composes."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...taskviews import Attempt as Attempt
    from ...taskviews import ModelUsage as ModelUsage
    from ...taskviews import TaskFailure as TaskFailure
    from ...taskviews import TaskInfo as TaskInfo
    from ...taskviews import TaskResult as TaskResult
    from ...taskviews import TaskSummary as TaskSummary
    from ...taskviews import Usage as Usage
    from .budget import Budget as Budget
    from .budget import Budgets as Budgets
    from .call import Call as Call
    from .durable import TaskJournal as TaskJournal
    from .durable import unknown_cursor as unknown_cursor
    from .ids import is_task_id as is_task_id
    from .ids import new_id as new_id
    from .interceptors import Interceptors as Interceptors
    from .interceptors import TaskInterceptor as TaskInterceptor
    from .manager import TaskManager as TaskManager
    from .model import LOST_IN_RESTART as LOST_IN_RESTART
    from .model import AttemptEnded as AttemptEnded
    from .model import CompactTask as CompactTask
    from .model import Task as Task
    from .model import TaskFinished as TaskFinished
    from .model import TaskProgress as TaskProgress
    from .model import TaskRecord as TaskRecord
    from .model import Unfinished as Unfinished
    from .payload import Output as Output
    from .payload import encode_input as encode_input
    from .payload import raw_output_of as raw_output_of
    from .queue import LocalQueue as LocalQueue
    from .queue import Queue as Queue
    from .retention import KEEP_FINISHED as KEEP_FINISHED
    from .retention import KEEP_FINISHED_BYTES as KEEP_FINISHED_BYTES
    from .taskmachine import AT_MOST_ONCE_NOTE as AT_MOST_ONCE_NOTE
    from .taskmachine import ON_WORKER as ON_WORKER
    from .taskmachine import TERMINAL as TERMINAL
    from .taskmachine import TaskStatus as TaskStatus
    from .waitclock import WaitClock as WaitClock

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
# a star import's names (without it, `import *` gives none of the lazy ones)
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
