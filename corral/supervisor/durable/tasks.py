"""A step's work when it is a task of an agent: submitted under the id its row holds (to
its agent only while that is of the call's tenant: recorded.py), waited for to its end."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, Protocol

import msgspec

from ...jsonrpc import RpcError
from ...taskoptions import TaskOptions
from ..tasks import TERMINAL, TaskManager
from ..tasks.recorded import RecordedTask, outcome
from .engine import Cancels, Work
from .record import StepEnd
from .store import SharedStore


class AgentTask(msgspec.Struct, frozen=True):
    """What a step's task is, the tenant of the call, and its parent trace context."""

    agent: str
    input: Any
    options: TaskOptions
    tenant: str | None
    traceparent: str | None = None
    tracestate: str | None = None


def step_end(info: Any) -> StepEnd:
    output = (msgspec.json.decode(info.output) if isinstance(info.output, msgspec.Raw)
              else info.output)
    return StepEnd(str(info.status), output,
                   info.error.message if info.error is not None else None)


class StepWork(Cancels, Protocol):
    """How a durable call's steps run their tasks: StepTasks, or cluster/calltasks.py's."""

    def work(self, step: AgentTask) -> Work: ...


class Durables(msgspec.Struct, frozen=True):
    """Where a cluster node's durable calls are kept and how their steps' tasks run."""

    store: SharedStore
    tasks: StepWork


class StepTasks:
    def __init__(self, engine: TaskManager) -> None:
        self.engine = engine

    def work(self, step: AgentTask) -> Work:
        return StepTask(self.engine, step)

    def cancel_task(self, task_id: str) -> None:
        task = self.engine.live(task_id)
        if task is not None and task.status not in TERMINAL:
            with contextlib.suppress(RpcError):
                self.engine.cancel(task_id)


class StepTask:
    """A step's task on this daemon's engine, under the id its row holds: waited for where
    the engine has it, else submitted (recorded.py)."""

    def __init__(self, engine: TaskManager, step: AgentTask) -> None:
        self.engine = engine
        self.step = step

    def __call__(self, task_id: str) -> Awaitable[StepEnd]:
        return self._run(task_id, False)

    def fresh(self, task_id: str) -> Awaitable[StepEnd]:
        """Its row made just now under a new id (StepEngine.step): submitted, not looked for."""
        return self._run(task_id, True)

    async def _run(self, task_id: str, fresh: bool) -> StepEnd:
        step = self.step
        recorded = RecordedTask(task_id, step.agent, step.tenant)
        info = await outcome(self.engine, recorded, lambda: self.engine.submit(
            step.agent, step.input, step.options, task_id=task_id,
            traceparent=step.traceparent, tracestate=step.tracestate), fresh=fresh)
        return step_end(info)
