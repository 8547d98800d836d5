"""What workers ask of the task manager about the tasks they run: `task/progress`,
`task/output`, `tools/call` (within the tool budget and allowlist), `tools/list`, steps."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...mcp.pool import allowed
from ...text import plural
from ...tracecontext import CALLER
from ...workerproto import (
    StepGetParams,
    StepPutParams,
    TaskCheckpointParams,
    TaskOutputParams,
    TaskProgressParams,
    ToolsCallParams,
    ToolsListParams,
)
from ..stream import Stream
from ..workercalls import on_notification, on_request
from .interceptors import AGENT_TOOL, Interceptors, TaskInterceptor, ToolCall, ToolPorts
from .model import Task, TaskProgress
from .output import TaskOutputs
from .steps import TaskSteps

if TYPE_CHECKING:
    from ..replica import Replica
    from .host import TaskHost


def report_progress(stream: Stream, task: Task, progress: dict[str, Any]) -> None:
    """The task's newest progress, kept and told to its watchers and on the stream."""
    task.progress = progress
    watchers = task.watchers
    if watchers or stream.wants(TaskProgress):
        event = TaskProgress(task, progress)
        if watchers:
            stream.tell(watchers, event)
        stream.emit(event)


def take_tool_call(task: Task, r: Replica) -> None:
    """A call the task makes now counts against its agent's max_tool_calls_per_task;
    TOOL_BUDGET_EXCEEDED when it has made them all."""
    budget = getattr(r.spec, "max_tool_calls_per_task", 0)
    if task.tool_calls >= budget:
        raise RpcError(jsonrpc.TOOL_BUDGET_EXCEEDED,
                       f"tool budget exceeded: task {task.id} has made "
                       f"{plural(task.tool_calls, 'tool call')} "
                       f"(max_tool_calls_per_task {budget})")
    task.tool_calls += 1


def give_back_tool_call(task: Task) -> None:
    """A call counted that is not made now (held for a person): taken again when it is."""
    task.tool_calls -= 1


class WorkerMethods:
    """The handlers of those methods, over the tasks in flight (`active`)."""

    def __init__(self, host: TaskHost, active: Mapping[str, Task], tools: ToolPorts,
                 interceptors: Interceptors,
                 live: Callable[[str], Task | None], asking: Callable[[str], bool],
                 agent_call: Callable[[ToolCall], Awaitable[Any]]) -> None:
        """`live`: an unfinished task by its id, made whole if it was held compact;
        `agent_call`: a task's call of an agent as a tool, its spawn."""
        stream = self.stream = host.stream
        self.active = active
        self.tools = tools
        self.agent_call = agent_call
        # the pool's tools behind the interceptors' (a team's leader's members, its spans)
        self.tool_router = interceptors.compose(TaskInterceptor.intercept_tool_call,
                                                self._made)
        self.tool_lister = interceptors.compose(TaskInterceptor.intercept_tool_list,
                                                tools.listing)
        self.allow_of = interceptors.compose(TaskInterceptor.intercept_allowed_tools,
                                             tools.allowed)
        self.steps = TaskSteps(stream, interceptors, asking)
        self.outputs = TaskOutputs(stream, live)
        notes, methods = host.worker_notifications, host.worker_methods
        on_notification(notes, TaskProgressParams, self.on_progress)
        on_notification(notes, TaskOutputParams, self.on_output)
        on_request(methods, ToolsCallParams, self.on_tool_call)
        on_request(methods, ToolsListParams, self.on_tool_list)
        on_request(methods, StepGetParams, self.on_step_get)
        on_request(methods, StepPutParams, self.on_step_put)
        on_request(methods, TaskCheckpointParams, self.on_task_checkpoint)

    def _made(self, call: ToolCall) -> Any:
        """Where a call past the interceptors is made: an agent's is its spawn, else the pool's."""
        if call.task is not None and call.name.startswith(AGENT_TOOL):
            return self.agent_call(call)
        return self.tools.call(call)

    def _task_of(self, r: Replica, task_id: str | None) -> Task | None:
        task = self.active.get(task_id) if task_id is not None else None
        if task is None or task.replica is not r or not task.running:
            return None
        return task

    def on_progress(self, r: Replica, p: TaskProgressParams) -> None:
        task = self._task_of(r, p.task_id)
        if task is None:
            r.note(f"ignored task/progress for a task it is not running: {p.task_id!r:.80}")
            return
        report_progress(self.stream, task, {k: v for k, v in msgspec.structs.asdict(p).items()
                                            if v is not None and k != "task_id"})

    def on_output(self, r: Replica, p: TaskOutputParams) -> None:
        task = self._task_of(r, p.task_id)
        if task is None:
            r.note(f"ignored task/output for a task it is not running: {p.task_id!r:.80}")
            return
        self.outputs.put(task, r, p.data)

    def on_tool_call(self, r: Replica, p: ToolsCallParams) -> Any:
        name = p.name
        allow = self.allow_of(r)
        if not allowed(name, allow):
            raise RpcError(jsonrpc.TOOL_NOT_ALLOWED,
                           f"tool {name} is not allowed for agent {r.name} (its tools "
                           f"allowlist: {allow})")
        task = self._task_of(r, p.task_id)
        if task is not None:
            return self.task_call(r, task, p)
        return self._routed(r, name, p.arguments or {}, task, p.meta)

    def task_call(self, r: Replica, task: Task, p: ToolsCallParams) -> Any:
        """A call that `r` makes for its running `task`, within its allowlist: a step of
        the task (the worker's `tools/call` and the gateway's calls attributed to it)."""
        name, arguments = p.name, p.arguments or {}
        return self.steps.tool_call(task, r, name, arguments,
                                    lambda key: self._live_call(r, name, arguments, task,
                                                                p.meta, key))

    async def _live_call(self, r: Replica, name: str, arguments: dict[str, Any],
                         task: Task, meta: dict[str, Any] | None = None,
                         key: str | None = None) -> Any:
        """A task's tool call made (not answered from its steps)."""
        take_tool_call(task, r)
        result = self._routed(r, name, arguments, task, meta, key)
        return await result if inspect.isawaitable(result) else result

    def _routed(self, r: Replica, name: str, arguments: dict[str, Any], task: Task | None,
                meta: dict[str, Any] | None, key: str | None = None) -> Any:
        """The tool router's call, the worker's trace context (`_meta`) set as its span starts."""
        if meta is None:
            return self.tool_router(ToolCall(r, name, arguments, task, key))
        said = CALLER.set(meta)
        try:
            return self.tool_router(ToolCall(r, name, arguments, task, key))
        finally:
            CALLER.reset(said)

    def on_tool_list(self, r: Replica, p: ToolsListParams) -> Any:
        return self.tool_lister(r)

    def running_on(self, r: Replica, method: str, task_id: str) -> Task:
        task = self._task_of(r, task_id)
        if task is None:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"{method}: task {task_id} is not running "
                                                   f"on {r.label}")
        return task

    def on_step_get(self, r: Replica, p: StepGetParams) -> Any:
        task = self.running_on(r, "step/get", p.task_id)
        self.steps.reserved(p.name, "step/get")
        return self.steps.get(task, p.name)

    def on_step_put(self, r: Replica, p: StepPutParams) -> Any:
        task = self.running_on(r, "step/put", p.task_id)
        self.steps.reserved(p.name, "step/put")
        return self.steps.put(task, r, p.name, p.result)

    def on_task_checkpoint(self, r: Replica, p: TaskCheckpointParams) -> Any:
        return self.steps.checkpoint(self.running_on(r, "task/checkpoint", p.task_id),
                                     p.state)
