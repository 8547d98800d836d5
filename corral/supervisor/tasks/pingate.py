"""The pin gate (docs/security.md#tool-pins): a call of a tool whose definition drifted
from its pin (mcp/pins.py `ToolDrifted`) waits for a person; an interceptor of the task
path, so a task's calls, a replica's calls of no task and a gateway client's (no agent's)
ask alike, and a call not approved is the boundary's refusal."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ...askviews import AskEnd, AskKind, AskRequest
from ...mcp.pins import ToolDrifted
from ..refusals import BoundaryRefusals
from .call import Call
from .interceptors import TaskInterceptor, TaskPath
from .personwait import waiting
from .replicacalls import ReplicaAsk


class PinGate(TaskInterceptor):
    def __init__(self, refusals: BoundaryRefusals | None = None) -> None:
        """`refusals`: told of each call refused, its person not approving the drift."""
        self._path: TaskPath | None = None
        self._refusals = refusals

    def bind(self, path: TaskPath) -> None:
        self._path = path

    async def intercept_tool_call(self, call: Call, next: Callable[[Call], Any]
                                  ) -> Any:
        try:
            answer = next(call)
            return await answer if inspect.isawaitable(answer) else answer
        except ToolDrifted as drifted:
            if not await self._approved(call, drifted):
                if self._refusals is not None:
                    task = call.task
                    r = call.replica
                    self._refusals.refused(
                        r.name if r is not None else call.caller, "pin", call.name,
                        task=task.id if task is not None else None,
                        tenant=task.tenant if task is not None else call.tenant)
                raise
            drifted.pins.approve(drifted.drift)
        answer = next(call)
        return await answer if inspect.isawaitable(answer) else answer

    async def _approved(self, call: Call, drifted: ToolDrifted) -> bool:
        assert self._path is not None  # bound as the engine was made
        subject = {"tool": call.name, "arguments": call.arguments,
                   "pin": drifted.drift.subject()}
        task = call.task
        with waiting():  # the person's time, not the call's
            if call.client is not None:  # a gateway client's, no agent's: its own ask
                ask = await self._path.replica_calls.client_ask(call, ReplicaAsk(
                    AskKind.APPROVAL, "pin", subject, None))
            elif task is None:
                ask = await self._path.replica_calls.ask(call.agent, ReplicaAsk(
                    AskKind.APPROVAL, "pin", subject, None))
            else:
                ask = await self._path.ask_person(AskRequest(
                    AskKind.APPROVAL, task.tenant, task.id, task.attempt, task.agent,
                    f"pin:{call.name}:{drifted.drift.digest[:16]}", subject, None))
        return ask.end is AskEnd.APPROVED
