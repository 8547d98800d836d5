# ruff: noqa: F405 - the results are corral.results', named by the methods
"""Tasks, their sessions and their traces."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..results import *  # noqa: F403
from ..taskoptions import FILTER_NAMES, OPTION_NAMES, TaskFilters, TaskOptions
from .declaration import Params, method, rest


class TaskParams(Params, TaskOptions):
    """What to run, on which agent, and how (its options: taskoptions.py): tasks.run's
    and tasks.submit's."""

    agent: str
    # kept as its JSON bytes: the daemon forwards the input to the worker without a
    # decode and an encode (a 10 MB document is checked once, by the scan that reads it);
    # a factory, as a Raw default cannot be written into the JSON Schema
    input: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    # with [cluster]: run it on this node, not on whichever node has room
    local: bool = False
    # W3C trace context of the caller: the task's trace is a child of it (with
    # [tracing]; docs/tracing.md)
    traceparent: str | None = None
    tracestate: str | None = None


MAX_WAIT = 3600.0  # seconds a tasks.submit may hold its answer for the outcome


@method("tasks.get", result=TaskInfo, scope="tasks:read", seen="task", cli="task",
        dashboard=True, routes=(
    rest("GET", "/tasks/{task_id}", "One task (with ?input=true, its input)", query=("input",)),
))
class TasksGet(Params):
    """One task: status, progress, output or error, and every attempt; with input, the
    input it was sent too (absent when it is not kept)."""

    task_id: str
    wait: bool = False
    input: bool = False


# a key sent before answers its task's outcome, which may be another caller's: a keyed
# run reads a task, as tasks.get does (issue 88)
@method("tasks.run", result=TaskResult, scope="tasks:run", needs={"idempotency_key": TasksGet},
        streaming=True, seen="agent", cli="run")
class TasksRun(TaskParams):
    """Run a task on an agent and wait for its outcome (progress arrives as `task.progress`
    notifications)."""


# waiting answers the task's outcome: whoever waits reads the task, as tasks.get does
@method("tasks.submit", result=TaskAccepted, scope="tasks:run", needs={"wait": TasksGet},
        seen="agent", cli="submit", dashboard=True, routes=(
    rest("POST", "/tasks", "Submit a task: 202 and its Location at once; "
         "with `wait`, its outcome (as `corral run --json` prints it) if it ends within that "
         "many seconds, else 202", query=("wait",),
         # (its idempotency_key: the Idempotency-Key header, rest.py; one way to say it)
         body=("agent", "input", "local", *(n for n in OPTION_NAMES
                                             if n != "idempotency_key")),
         idempotent=True, location="/tasks/{task_id}", done_when="attempts"),
))
class TasksSubmit(TaskParams):
    """Submit a task and answer its id at once, while it runs on; with wait, hold the
    answer up to that many seconds for its outcome (the tasks:read scope too)."""

    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] | None = None


@method("tasks.stream", result=TaskInfo, scope="tasks:read", streaming=True, seen="task",
        dashboard=True, routes=(
    rest("GET", "/tasks/{task_id}/stream", "A task's live output (SSE): each chunk as it "
         "comes, resumable with Last-Event-ID, then the task as `result`", stream="tasks.output"),
))
class TasksStream(Params):
    """A task's live output: the task as it is (`tasks.task`), then each chunk as a
    `tasks.output` notification with its position (`id`), from the first or after
    `last_event_id`, until the task has ended and every chunk kept is sent; then the
    task, as tasks.get answers it."""

    task_id: str
    last_event_id: str | None = None  # resume after this chunk (an id the stream gave)


@method("tasks.list", result=TaskList, scope="tasks:read", seen="tasks", cli="tasks",
        dashboard=True, routes=(
    rest("GET", "/tasks", "Recent tasks, newest last, a page at a time",
         query=("agent", "status", "since", "limit", "before", "local", *FILTER_NAMES),
         cursor="before"),
))
class TasksList(Params, TaskFilters):
    """Recent tasks, newest last (from the task journal: every task until it is pruned;
    with [cluster], the cluster's tasks on every node), a page of `limit` at a time:
    `next`, when there are older tasks, is the `before` that lists them."""

    agent: str | None = None
    limit: int = 100
    status: str | None = None
    since: float | None = None  # seconds ago
    before: str | None = None  # a task id: only the tasks accepted before it
    # with [cluster]: this node's own tasks (its journal), not the cluster's
    local: bool = False


@method("sessions.list", result=SessionList, scope="tasks:read", seen="sessions",
        cli="sessions", routes=(
    rest("GET", "/sessions", "The live sessions (of an agent)",
         query=("agent",)),
))
class SessionsList(Params):
    """The live sessions (of AGENT): their tasks, last use, the replica that holds each
    and the size of its state."""

    agent: str | None = None


@method("sessions.get", result=SessionInfo, scope="tasks:read", seen="session", routes=(
    rest("GET", "/agents/{name}/sessions/{session}",
         "One session and the history of its tasks",
         path_params={"name": "agent", "session": "session"}),
))
class SessionsGet(Params):
    """One session and the history of its tasks, in the order they were submitted."""

    agent: str
    session: str  # (a name no session can have is simply not found)


@method("sessions.end", result=SessionView, scope="tasks:run", mutating=True,
        seen="session", routes=(
    rest("POST", "/agents/{name}/sessions/{session}/end",
         "End a session: its state and history dropped",
         path_params={"name": "agent", "session": "session"}),
))
class SessionsEnd(Params):
    """End a session: its state and history are dropped (refused while a task of it is
    queued or running); a later task naming it starts it afresh."""

    agent: str
    session: str  # (a name no session can have is simply not found)


@method("tasks.cancel", result=TaskInfo, scope="tasks:run", mutating=True, seen="task",
        cli="cancel", routes=(
    rest("POST", "/tasks/{task_id}/cancel", "Cancel a task"),
))
class TasksCancel(Params):
    """Cancel a queued or running task."""

    task_id: str


@method("traces.get", result=TraceView, scope="tasks:read", seen="task", cli="trace",
        dashboard=True, routes=(
    rest("GET", "/tasks/{task_id}/trace", "A task's trace: its spans from the "
         "local store (with [tracing])"),
))
class TracesGet(Params):
    """A task's trace from the daemon's local store: the task, its queue waits, its
    attempts and their tool calls (with [tracing]; docs/tracing.md)."""

    task_id: str
