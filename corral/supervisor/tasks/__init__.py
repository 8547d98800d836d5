"""Tasks: work given to agents, each ending in exactly one terminal outcome.

model.py      Task (a TaskMachine), TaskRecord (the structs that show a task, and usage
              reported: corral.taskviews, shared with the CLI), and the tasks' events on
              the stream (TaskProgress, TaskFinished, AttemptEnded)
ids.py        task ids (UUIDv7: unique, sortable by creation)
payload.py    inputs encoded, workers' answers read in one pass (Output)
durable.py    the TaskJournal port (the daemon's: corral.daemon.taskjournal)
admission.py  refusals: an agent that cannot run it, input size, rate, a full queue;
              the step every task passes wherever it runs (admit)
intake.py     a task's way in: submitted, a map's turn, a cluster's claimed (Intake)
queue.py      the Queue protocol, and LocalQueue (the priority lines)
quotahooks.py the tenants' quotas' admission check and gates, only while some tenant sets one
dispatch.py   to a replica's free slot, deadlines, an attempt's end
sessions.py   a session's tasks one at a time, on the replica that holds it, its state
taskmachine.py a task's lifecycle, without I/O: TaskStatus, the table (status, cause)
              -> next status, the retry rule, how an attempt ended
retry.py      the retry policy's backoff
delays.py     tasks not to start before a time (a delay, a backoff), behind one timer
budget.py     usage agents report, token and cost budgets, the gate dispatch asks
deadlines.py  the running attempts' deadlines, behind one timer
counters.py   per-agent counts and latency window
endings.py    a task's end (its one outcome), a retry, an agent's waiting tasks ended
recovery.py   tasks taken back after a restart or an upgrade
retention.py  what finished tasks keep in memory
worker.py     task/progress, tools/call and tools/list from workers
inbox.py      what tasks ask of a person (approvals, questions), decided once
personloop.py a running task's call asks a person and waits; a task failed from outside
suspension.py a task waiting for a person past suspend_after gives its attempt back
waitclock.py  the clock a person's waits are measured by (manual in tests)
manager.py    TaskManager, composing them
"""

from ...taskviews import Attempt, ModelUsage, TaskFailure, TaskInfo, TaskResult, TaskSummary, Usage
from .admission import MAX_INPUT_BYTES
from .budget import Budget, Budgets
from .counters import LATENCY_WINDOW, AgentTasks
from .dispatch import CANCEL_GRACE, TaskDispatch
from .durable import TaskJournal, unknown_cursor
from .ids import is_task_id, new_id
from .interceptors import Interceptors, TaskInterceptor, ToolCall, ToolPorts
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
from .retention import FINISHED_KEPT, FINISHED_KEPT_BYTES, Retention
from .taskmachine import AT_MOST_ONCE_NOTE, ON_WORKER, TERMINAL, TaskStatus
from .waitclock import WaitClock

__all__ = [
    "AT_MOST_ONCE_NOTE",
    "CANCEL_GRACE",
    "FINISHED_KEPT",
    "FINISHED_KEPT_BYTES",
    "LATENCY_WINDOW",
    "LOST_IN_RESTART",
    "MAX_INPUT_BYTES",
    "ON_WORKER",
    "TERMINAL",
    "AgentTasks",
    "Attempt",
    "AttemptEnded",
    "Budget",
    "Budgets",
    "CompactTask",
    "Interceptors",
    "LocalQueue",
    "ModelUsage",
    "Output",
    "Queue",
    "Retention",
    "Task",
    "TaskDispatch",
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
    "ToolCall",
    "ToolPorts",
    "Unfinished",
    "Usage",
    "WaitClock",
    "encode_input",
    "is_task_id",
    "new_id",
    "raw_output_of",
    "unknown_cursor",
]
