"""A cluster node's durable calls' steps as cluster tasks (supervisor/durable/tasks.py's
StepTasks on one node): each step's task submitted to the cluster under the id its row
holds and waited for from its record, so that the node driving the call is not the one
its tasks live on. A call taken over from a dead node submits each running step again
under that id, which the submit takes as the one it has (idempotent on the id): the
task the dead node's call submitted is the one waited for, retried or lost by the
cluster's rules for a dead node's tasks (reaper.py), never made a second time.

A step's `retries` is not kept by the cluster's queue: its task is retried by its
agent's policy on the node that runs it, as every cluster task is (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.durable import StepEnd
from ..supervisor.durable.engine import Work
from ..supervisor.durable.tasks import AgentTask, step_end
from .clustertasks import ClusterTasks


class ClusterStepTasks:
    """StepTasks for a cluster node: `work` and `cancel_task`, on the cluster's tasks."""

    def __init__(self, desk: ClusterTasks,
                 cancel: Callable[[str], Awaitable[Any]]) -> None:
        """`cancel`: a cluster task cancelled from this node (ClusterNode.cancel)."""
        self.desk = desk
        self._cancel = cancel
        self._cancels: set[asyncio.Task[None]] = set()

    def work(self, step: AgentTask) -> Work:
        params = m.TasksSubmit(
            agent=step.agent, input=msgspec.Raw(msgspec.json.encode(step.input)),
            timeout=step.options.timeout, traceparent=step.traceparent,
            tracestate=step.tracestate)

        async def run(task_id: str) -> StepEnd:
            return step_end(await self.desk.step(params, task_id))
        return run

    def cancel_task(self, task_id: str) -> None:
        """Cancelled wherever it runs, in the background (the engine's call is not
        awaited); a task already ended stays as it ended."""
        async def cancelling() -> None:
            with contextlib.suppress(RpcError):
                await self._cancel(task_id)
        task = asyncio.ensure_future(cancelling())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
