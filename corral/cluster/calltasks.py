"""A cluster node's durable calls' steps as cluster tasks: each step's task submitted under
the id its row holds and waited for from its record. A call taken over from a dead node
submits each running step again under that id, which the submit answers with the task it
has: never made a second time (docs/cluster.md#workflow-runs-on-any-node).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.durable import StepEnd, StepRow
from ..supervisor.durable.store import DurableStore
from ..supervisor.durable.tasks import AgentTask, step_end
from ..timeouts import kept
from .clustercalls import ClusterCalls
from .clustertasks import ClusterTasks
from .rides import LostLease

KEEP_SETTLED = 10_000  # step tasks ended whose rows were not yet saved, at most


class ClusterStepTasks:
    """StepTasks for a cluster node: `work` and `cancel_task`, on the cluster's tasks."""

    def __init__(self, desk: ClusterTasks,
                 cancel: Callable[[str], Awaitable[Any]]) -> None:
        self.desk = desk
        self._cancel = cancel
        self._cancels: set[asyncio.Task[None]] = set()
        # the step tasks that ended here, until their rows are saved (bounded: a driver
        # cancelled between a task's end and its row's leaves its id behind)
        self._settled: dict[str, None] = {}

    def work(self, step: AgentTask) -> StepSubmit:
        return StepSubmit(self, m.TasksSubmit(
            agent=step.agent, input=msgspec.Raw(msgspec.json.encode(step.input)),
            timeout=step.options.timeout, traceparent=step.traceparent,
            tracestate=step.tracestate))

    def ended(self, task_id: str, got: m.TaskResult | m.TaskInfo) -> StepEnd:
        end = step_end(got)
        if len(self._settled) >= KEEP_SETTLED:
            del self._settled[next(iter(self._settled))]
        self._settled[task_id] = None
        return end

    def settled(self, task_id: str) -> bool:
        """Whether `task_id` is a step's task that ended here (asked once: forgotten as
        it is answered)."""
        return self._settled.pop(task_id, 0) is None

    def cancel_task(self, task_id: str) -> None:
        """Cancelled wherever it runs, in the background (the engine's call is not awaited)."""
        async def cancelling() -> None:
            with contextlib.suppress(RpcError):
                await self._cancel(task_id)
        kept(self._cancels, asyncio.ensure_future(cancelling()))


class StepSubmit:
    """A step's work on a cluster node: its task submitted, its new row kept by that submit."""

    def __init__(self, tasks: ClusterStepTasks, params: m.TasksSubmit) -> None:
        self.tasks = tasks
        self.params = params

    async def __call__(self, task_id: str) -> StepEnd:
        return self.tasks.ended(task_id, await self.tasks.desk.step(self.params, task_id))

    async def carry(self, store: DurableStore, call_id: str, row: StepRow,
                    noted: Callable[[], None]) -> StepEnd:
        """The row written by the task's submit script under the call's lease (a lost
        lease: RpcError CONFLICT, no task made)."""
        assert row.task_id is not None
        if not isinstance(store, ClusterCalls):  # (a cluster node's calls are)
            await store.save_steps(call_id, [row])
            noted()
            return await self(row.task_id)
        ride = store.ride(call_id, row, noted)
        try:
            got = await self.tasks.desk.step(self.params, row.task_id, ride)
        except LostLease:
            raise store.lost_lease(call_id) from None
        return self.tasks.ended(row.task_id, got)
