"""The tasks methods' handlers: a task submitted, run, read, listed or cancelled through
the task front (local, or the cluster's), a task's trace, and its live output."""

from __future__ import annotations

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.tasks.chunks import START
from ..supervisor.tasks.output import TaskOutputs, position_of
from . import replayview, submitspan
from .api import Commands, by_name
from .audit import Audit
from .caller import Caller, Channel
from .handing import handing
from .services import Services
from .submitted import submitted
from .tasks import TaskFront
from .traces import Traces


class TaskServices(msgspec.Struct, frozen=True):
    tasks: TaskFront  # local, or the cluster's
    traces: Traces | None  # with [tracing]
    outputs: TaskOutputs  # the engine's tasks' live output
    audit: Audit


COMMANDS: Commands[Services, TaskServices] = Commands(by_name(TaskServices))
implements = COMMANDS.implements


@implements(m.TasksSubmit)
async def tasks_submit(t: TaskServices, p: m.TasksSubmit, caller: Caller, c: Channel
                       ) -> m.TaskAccepted:
    # (its identity and view before this: the Dispatcher's; a refusal's audit after, the
    # Dispatcher's too; an acceptance's, whatever its door, here: submitted.py)
    tracer = t.traces.tracer if t.traces is not None else None
    p, span = submitspan.begin(tracer, caller, p)  # (its trace link: the task's parent)
    with handing(caller):
        accepted = replayview.seen(await t.tasks.submit(p, c, caller.holder), caller)
    submitted(t.audit, caller, p.agent, accepted.task_id)
    submitspan.accepted(tracer, span, caller, p, accepted.task_id)
    return accepted


@implements(m.TasksRun)
async def tasks_run(t: TaskServices, p: m.TasksRun, caller: Caller, c: Channel
                    ) -> m.TaskResult:
    with handing(caller):
        return await t.tasks.run(p, c, caller.holder)


@implements(m.TasksGet)
async def tasks_get(t: TaskServices, p: m.TasksGet, caller: Caller, c: Channel
                    ) -> m.TaskInfo:
    info = await t.tasks.get(p.task_id, wait=p.wait)
    if p.input:
        kept = await t.tasks.input_of(p.task_id)
        if kept is not None:
            info.input = kept
    return info


@implements(m.TasksList)
async def tasks_list(t: TaskServices, p: m.TasksList, caller: Caller, c: Channel
                     ) -> m.TaskList:
    # a caller limited to some agents pages through theirs only (full pages; a cursor
    # of another agent's task reads as absent)
    tasks, older = await t.tasks.list(p, caller.sees_record if caller.limited else None)
    return m.TaskList(tasks=tasks, next=older if older is not None else msgspec.UNSET)


@implements(m.TasksCancel)
async def tasks_cancel(t: TaskServices, p: m.TasksCancel, caller: Caller, c: Channel
                       ) -> m.TaskInfo:
    return await t.tasks.cancel(p.task_id)


@implements(m.TracesGet)
async def traces_get(t: TaskServices, p: m.TracesGet, caller: Caller, c: Channel
                     ) -> m.TraceView:
    if t.traces is None:
        raise RpcError(jsonrpc.CONFLICT, "tracing is off in this daemon: add a [tracing] "
                       "table to the config (docs/tracing.md); it is read at start: restart "
                       "the daemon or `corral upgrade`")
    view = await t.traces.trace(p.task_id)
    if not view.spans:  # an id of no task (a session's, a run's): as `corral task` says it
        await t.tasks.get(p.task_id, wait=False)
    return view


@implements(m.TasksStream)
async def tasks_stream(t: TaskServices, p: m.TasksStream, caller: Caller, c: Channel
                       ) -> m.TaskInfo:
    """The caller costs the daemon its position: while its channel is not writable the
    handler waits, and what the task writes meanwhile is kept in the journal."""
    after = START
    if p.last_event_id is not None:
        try:
            after = position_of(p.last_event_id)
        except ValueError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"last_event_id: {exc}") from None
    # as it is when the stream begins (SSE opens here); an unknown task: not found
    c.notify("tasks.task", await t.tasks.get(p.task_id, wait=False))
    async for chunks in t.outputs.follow(p.task_id, after):
        for chunk in chunks:
            await c.writable.wait()
            c.notify("tasks.output", m.TaskChunk(
                id=chunk.id, task_id=chunk.task_id, attempt=chunk.attempt, n=chunk.n,
                data=chunk.data, truncated=chunk.truncated))
    return await t.tasks.get(p.task_id, wait=False)
