"""A coordinate team's members as the leader's tools (`TEAM__MEMBER`), listed and allowed
only while a replica runs a team's leader task, a call of one the member's own task (a
step). An interceptor: a tool that is no team's goes on to the pool unchanged."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ...tracecontext import CURRENT
from ..tasks.call import Call
from ..tasks.interceptors import TaskInterceptor, TaskPath
from ..tasks.steps import args_hash
from .call import TeamCall
from .check import TOOL_SEP
from .runner import TeamRunner

if TYPE_CHECKING:
    from ..replica import Replica
    from ..tasks.model import Task

INPUT_SCHEMA = {"type": "object", "properties": {"input": {
    "description": "what the member is sent (any JSON)"}}, "required": ["input"]}


def tool_entry(call: TeamCall, member: str) -> dict[str, Any]:
    return {"name": f"{call.team}{TOOL_SEP}{member}",
            "description": f"a task of agent {member}, a member of team {call.team}"
                           + (f": {call.spec.description}" if call.spec.description else ""),
            "inputSchema": INPUT_SCHEMA}


def tool_result(output: Any, error: str | None) -> dict[str, Any]:
    """As an MCP tools/call answers: a member that did not succeed is a tool error."""
    if error is not None:
        return {"content": [{"type": "text", "text": error}], "isError": True}
    return {"content": [{"type": "text", "text": msgspec.json.encode(output).decode()}],
            "structuredContent": {"output": output}, "isError": False}


class LeaderTools(TaskInterceptor):
    def __init__(self) -> None:
        self._runners: list[TeamRunner] = []
        self._active: Mapping[str, Task] = {}  # the engine's tasks in flight (`bind`)
        # a leader's attempt -> how many times it called each (member, arguments): the
        # n-th such call of a retried attempt is the n-th of the one before (its step)
        self._counts: dict[str, tuple[int, dict[tuple[str, str], int]]] = {}

    def serve(self, runner: TeamRunner) -> None:
        """The calls `runner` drives: their leaders get their members as tools."""
        self._runners.append(runner)

    def bind(self, path: TaskPath) -> None:
        self._active = path.active

    def _leading(self, task_id: str) -> tuple[TeamRunner, TeamCall] | None:
        for runner in self._runners:
            call = runner.leaders.get(task_id)
            if call is not None:
                return runner, call
        return None

    def intercept_allowed_tools(self, replica: Replica,
                                next: Callable[[Replica], list[str]]) -> list[str]:
        names = next(replica)
        mine = [t["name"] for t in self._tools_on(replica)]
        return [*names, *mine] if mine else names

    def intercept_tool_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        task = call.task
        leading = self._leading(task.id) if task is not None else None
        member = _member(leading[1], call.name) if leading is not None else None
        if leading is None or member is None or task is None:
            return next(call)
        return self.call(leading, task, member, call.arguments)

    def intercept_tool_list(self, replica: Replica, next: Callable[[Replica], Any]) -> Any:
        return self._listed(replica, next(replica))

    async def _listed(self, r: Replica, listed: Any) -> Any:
        result = await listed if inspect.isawaitable(listed) else listed
        mine = self._tools_on(r)
        if mine and isinstance(result, dict):
            result = {**result, "tools": [*result.get("tools", []), *mine]}
        return result

    def _tools_on(self, r: Replica) -> list[dict[str, Any]]:
        """The members of every team whose leader's task runs on `r` now."""
        out: list[dict[str, Any]] = []
        active = self._active
        for runner in self._runners:
            for task_id, call in runner.leaders.items():
                task = active.get(task_id)
                if task is not None and task.replica is r:
                    out.extend(tool_entry(call, m) for m in call.spec.members)
        return out

    async def call(self, leading: tuple[TeamRunner, TeamCall], task: Task, member: str,
                   arguments: dict[str, Any]) -> dict[str, Any]:
        runner, call = leading
        member_input = arguments.get("input", arguments)
        digest = args_hash(member_input).hex()
        attempt, counts = self._counts.get(task.id, (0, {}))
        if attempt != task.attempt:
            for gone in [k for k in self._counts if self._leading(k) is None]:
                del self._counts[gone]
            attempt, counts = task.attempt, {}
            self._counts[task.id] = (attempt, counts)
        n = counts[(member, digest)] = counts.get((member, digest), 0) + 1
        span = CURRENT.get()  # the leader's tool call's, when traced
        st = await runner.step(call, f"tool:{member}:{digest}:{n}", member,
                                    member_input, span.meta if span is not None else {})
        if st.status == "succeeded":
            return tool_result(st.output, None)
        return tool_result(None, f"member {member} {st.status} (task {st.task_id})"
                           + (f": {st.error}" if st.error else ""))


def _member(call: TeamCall, name: str) -> str | None:
    team, sep, member = name.partition(TOOL_SEP)
    if sep and team == call.team and member in call.spec.members:
        return member
    return None
