"""A cluster node's durable calls' steps as cluster tasks (supervisor/durable/tasks.py's
StepTasks on one node): each step's task submitted to the cluster under the id its row
holds and waited for from its record, so that the node driving the call is not the one
its tasks live on. A call taken over from a dead node submits each running step again
under that id, which the submit takes as the one it has (idempotent on the id): the
task the dead node's call submitted is the one waited for, retried or lost by the
cluster's rules for a dead node's tasks (reaper.py), never made a second time.

The step's task that ended is told to the calls' store (`settled`): its ended row rides
with the call's next write (clustercalls.py), the task's record keeping its end meanwhile.

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

SETTLED_KEPT = 10_000  # step tasks ended whose rows were not yet saved, at most


class ClusterStepTasks:
    """StepTasks for a cluster node: `work` and `cancel_task`, on the cluster's tasks."""

    def __init__(self, desk: ClusterTasks,
                 cancel: Callable[[str], Awaitable[Any]]) -> None:
        """`cancel`: a cluster task cancelled from this node (ClusterNode.cancel)."""
        self.desk = desk
        self._cancel = cancel
        self._cancels: set[asyncio.Task[None]] = set()
        # the step tasks that ended here, until their rows are saved (bounded: a driver
        # cancelled between a task's end and its row's leaves its id behind)
        self._settled: dict[str, None] = {}

    def work(self, step: AgentTask) -> Work:
        params = m.TasksSubmit(
            agent=step.agent, input=msgspec.Raw(msgspec.json.encode(step.input)),
            timeout=step.options.timeout, traceparent=step.traceparent,
            tracestate=step.tracestate)

        async def run(task_id: str) -> StepEnd:
            end = step_end(await self.desk.step(params, task_id))
            if len(self._settled) >= SETTLED_KEPT:
                del self._settled[next(iter(self._settled))]
            self._settled[task_id] = None
            return end
        return run

    def settled(self, task_id: str) -> bool:
        """Whether `task_id` is a step's task that ended here, its record holding its
        end (asked once: forgotten as it is answered)."""
        return self._settled.pop(task_id, 0) is None

    def cancel_task(self, task_id: str) -> None:
        """Cancelled wherever it runs, in the background (the engine's call is not
        awaited); a task already ended stays as it ended."""
        async def cancelling() -> None:
            with contextlib.suppress(RpcError):
                await self._cancel(task_id)
        task = asyncio.ensure_future(cancelling())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
