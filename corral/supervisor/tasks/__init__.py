"""Tasks: work given to agents, each ending in exactly one terminal outcome. Each module's
job is named in docs/architecture.md; manager.py's TaskManager composes them."""

from ...taskviews import Attempt, ModelUsage, TaskFailure, TaskInfo, TaskResult, TaskSummary, Usage
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
