"""What workers ask of the task manager about the tasks they run: `task/progress`,
`task/output`, `tools/call` (within the tool budget and allowlist), `tools/list`, steps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
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
from .call import Call, DoorWire
from .chain import Chain
from .interceptors import AGENT_TOOL, Interceptors, TaskInterceptor, ToolPorts
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


class WorkerMethods:
    """The handlers of those methods, over the tasks in flight (`active`)."""

    def __init__(self, host: TaskHost, active: Mapping[str, Task], tools: ToolPorts,
                 interceptors: Interceptors,
                 live: Callable[[str], Task | None], asking: Callable[[str], bool],
                 agent_call: Callable[[Call], Awaitable[Any]]) -> None:
        """`live`: an unfinished task by its id, made whole if it was held compact;
        `agent_call`: a task's call of an agent as a tool, its spawn."""
        stream = self.stream = host.stream
        self.active = active
        self.tools = tools
        self.steps = TaskSteps(stream, interceptors, asking)
        self.chain = Chain(active, tools, interceptors, self.steps, agent_call)
        self.tool_lister = interceptors.compose(TaskInterceptor.intercept_tool_list,
                                                tools.listing)
        self.outputs = TaskOutputs(stream, live)
        # an agent called naming no task, where no task is the call's: the daemon's own
        # dispatch, a task of its own (gatewayaccess.py), as at /mcp (decision 1830)
        self.agents_wire: DoorWire | None = None
        notes, methods = host.worker_notifications, host.worker_methods
        on_notification(notes, TaskProgressParams, self.on_progress)
        on_notification(notes, TaskOutputParams, self.on_output)
        on_request(methods, ToolsCallParams, self.on_tool_call)
        on_request(methods, ToolsListParams, self.on_tool_list)
        on_request(methods, StepGetParams, self.on_step_get)
        on_request(methods, StepPutParams, self.on_step_put)
        on_request(methods, TaskCheckpointParams, self.on_task_checkpoint)

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
        """The worker link's door: the call, with the task it names if it runs it."""
        return self.chain.enter(Call(r, p.name, p.arguments or {},
                                     self._task_of(r, p.task_id), meta=p.meta,
                                     wire=self.agents_wire if p.name.startswith(AGENT_TOOL)
                                     else None))

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
