"""A coordinate team's members as the leader's tools (`TEAM__MEMBER`): in the tool list
and the allowlist of a replica only while it runs a task as a team's leader, and a call of
one a step of the team's call, the member's own task (its budgets, allowlist and retries).
Installed around the engine's worker methods as tracing.py wraps the tool router: a tool
that is no team's goes on to the pool unchanged. Installed after tracing's wrapper (the
daemon's teams come after its tracer), a team's tool is given tracing's own wrapper
(`traced`): a client span of the leader's, which the member's task is a child of."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ...tracecontext import CURRENT
from ..tasks.steps import args_hash
from .call import TeamCall
from .check import TOOL_SEP
from .runner import TeamRunner

if TYPE_CHECKING:
    from ..replica import Replica
    from ..tasks.model import Task
    from ..tasks.worker import WorkerMethods

Router = Callable[..., Any]  # a worker methods' tool router
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

class LeaderTools:
    def __init__(self, runner: TeamRunner,
                 traced: Callable[[Router], Router] | None = None) -> None:
        self.runner = runner
        self.traced = traced  # tracing's wrapper of a tool router (with [tracing])
        # a leader's attempt -> how many times it called each (member, arguments): the
        # n-th such call of a retried attempt is the n-th of the one before (its step)
        self._counts: dict[str, tuple[int, dict[tuple[str, str], int]]] = {}

    def install(self, worker: WorkerMethods) -> None:
        allow, route, lister = worker.allow_of, worker.tool_router, worker.tool_lister

        def allow_of(r: Replica) -> list[str]:
            names = allow(r)
            mine = [t["name"] for t in self._tools_on(r)]
            return [*names, *mine] if mine else names

        def tool_router(r: Replica, name: str, arguments: dict[str, Any],
                        task: Task | None) -> Any:
            call = self.runner.leaders.get(task.id) if task is not None else None
            member = _member(call, name) if call is not None else None
            if call is None or member is None or task is None:
                return route(r, name, arguments, task)

            def to_member(r: Replica, name: str, arguments: dict[str, Any],
                          task: Task) -> Any:
                return self.call(call, task, member, arguments)
            mine = self.traced(to_member) if self.traced is not None else to_member
            return mine(r, name, arguments, task)

        async def tool_lister(r: Replica) -> Any:
            listed = lister(r)
            result = await listed if inspect.isawaitable(listed) else listed
            mine = self._tools_on(r)
            if mine and isinstance(result, dict):
                result = {**result, "tools": [*result.get("tools", []), *mine]}
            return result

        worker.allow_of = allow_of
        worker.tool_router = tool_router
        worker.tool_lister = tool_lister

    def _tools_on(self, r: Replica) -> list[dict[str, Any]]:
        """The members of every team whose leader's task runs on `r` now."""
        out: list[dict[str, Any]] = []
        active = self.runner.engine.active
        for task_id, call in self.runner.leaders.items():
            task = active.get(task_id)
            if task is not None and task.replica is r:
                out.extend(tool_entry(call, m) for m in call.spec.members)
        return out

    async def call(self, call: TeamCall, task: Task, member: str,
                   arguments: dict[str, Any]) -> dict[str, Any]:
        member_input = arguments.get("input", arguments)
        digest = args_hash(member_input).hex()
        attempt, counts = self._counts.get(task.id, (0, {}))
        if attempt != task.attempt:
            for gone in [k for k in self._counts if k not in self.runner.leaders]:
                del self._counts[gone]
            attempt, counts = task.attempt, {}
            self._counts[task.id] = (attempt, counts)
        n = counts[(member, digest)] = counts.get((member, digest), 0) + 1
        span = CURRENT.get()  # the leader's tool call's, when traced
        st = await self.runner.step(call, f"tool:{member}:{digest}:{n}", member,
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
