"""What workers ask of the task manager: `task/progress` (a notification), `tools/call`
(counted against the task's tool budget, within the agent's allowlist) and `tools/list`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...mcp.pool import allowed
from ...text import plural
from .model import Task, TaskStatus

if TYPE_CHECKING:
    from ..replica import Replica

ToolRouter = Callable[["Replica", str, dict[str, Any], "Task | None"], Any]


def report_progress(task: Task, params: dict[str, Any]) -> None:
    task.progress = params
    for w in list(task.watchers or ()):
        w("progress", params)


class WorkerMethods:
    """The handlers of the three methods, over the tasks in flight (`active`)."""

    def __init__(self, active: Mapping[str, Task], tool_router: ToolRouter,
                 tool_lister: Callable[[Replica], Any]) -> None:
        self.active = active
        self.tool_router = tool_router
        self.tool_lister = tool_lister
        # the tools a replica's agent may call (the engine narrows it to its tenant's)
        self.allow_of: Callable[[Replica], list[str]] = lambda r: list(
            getattr(r.spec, "tools", []))

    def _task_of(self, r: Replica, params: dict[str, Any]) -> Task | None:
        tid = params.get("task_id")
        task = self.active.get(str(tid)) if tid is not None else None
        if task is None or task.replica is not r or task.status != TaskStatus.RUNNING:
            return None
        return task

    def on_progress(self, r: Replica, params: dict[str, Any]) -> None:
        task = self._task_of(r, params)
        if task is None:
            r.note(f"ignored task/progress for a task it is not running: {params!r:.200}")
            return
        params.pop("task_id", None)
        report_progress(task, params)

    def on_tool_call(self, r: Replica, params: dict[str, Any]) -> Any:
        name = params.get("name")
        if not isinstance(name, str):
            raise RpcError(jsonrpc.INVALID_PARAMS, "tools/call: name must be a string")
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise RpcError(jsonrpc.INVALID_PARAMS, "tools/call: arguments must be an object")
        allow = self.allow_of(r)
        if not allowed(name, allow):
            raise RpcError(jsonrpc.TOOL_NOT_ALLOWED,
                           f"tool {name} is not allowed for agent {r.name} (its tools "
                           f"allowlist: {allow})")
        task = self._task_of(r, params)
        if task is not None:
            budget = getattr(r.spec, "max_tool_calls_per_task", 0)
            if task.tool_calls >= budget:
                raise RpcError(jsonrpc.TOOL_BUDGET_EXCEEDED,
                               f"tool budget exceeded: task {task.id} has made "
                               f"{plural(task.tool_calls, 'tool call')} "
                               f"(max_tool_calls_per_task {budget})")
            task.tool_calls += 1
        return self.tool_router(r, name, arguments, task)

    def on_tool_list(self, r: Replica, params: dict[str, Any]) -> Any:
        return self.tool_lister(r)
