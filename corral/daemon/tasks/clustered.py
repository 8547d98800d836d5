"""Tasks with [cluster]: handed to the cluster unless submitted `local`, which this node's
LocalFront takes. A task id is looked up in the cluster first: a cluster task's record has
every attempt, wherever it ran; an id the cluster has not is this node's own."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from redis.exceptions import RedisError

from ... import jsonrpc
from ... import methods as m
from ...cluster import records
from ...cluster.connection import unavailable
from ...cluster.node import ClusterNode
from ...jsonrpc import RpcError
from ...supervisor.quotas import Tenancy
from ...supervisor.tasks import Unfinished
from ...supervisor.tasks.admission import admit
from ...taskviews import TaskInfo, TaskResult
from ..caller import Channel
from ..flowcontrol import Latest
from .front import Page, Sees, accepted, listing_window
from .local import LocalFront

P = TypeVar("P", m.TasksRun, m.TasksSubmit)


class ClusterFront:
    def __init__(self, local: LocalFront, node: ClusterNode, quotas: Tenancy) -> None:
        self.local = local
        self.node = node
        self.desk = node.desk
        self.agents, self.engine, self.quotas = local.agents, local.engine, quotas
        self.recovered = local.recovered  # the cluster's calls wait for it too

    @property
    def refusing(self) -> str | None:
        return self.local.refusing

    def recover(self, records: list[Unfinished],
                reattached: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.local.recover(records, reattached)

    def _admitted(self, p: P) -> P:
        """(Every option is kept with the task's record: ClusterTasks; a delay holds it
        out of its stream until due, cluster/due.py.)"""
        try:  # a start time checked as a local task's is, in its words (intake.py)
            p.start_at(time.time())
        except ValueError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {exc}") from None
        # the one admission step, as a local task passes it: for an agent this node runs,
        # its tenant's task quotas (this node's counts) and max_task_seconds
        timeout = admit(self.agents.get(p.agent), len(p.input), p.timeout,
                        tenancy=self.quotas, depth=self.engine.queue.depth)
        return p if timeout == p.timeout else msgspec.structs.replace(p, timeout=timeout)

    async def submit(self, p: m.TasksSubmit, channel: Channel, holder: str | None
                     ) -> m.TaskAccepted:
        if p.local:
            return await self.local.submit(p, channel, holder)
        await self.recovered.wait()
        # (a wait of 0 is none: a task on Redis has not ended as it is accepted, and a
        # replay's ended outcome is read then too)
        task_id, outcome, replayed = await self.desk.submit(self._admitted(p), p.wait or None,
                                                            holder)
        answer = accepted(task_id, "queued", outcome)
        if replayed:
            answer.replayed = True
        return answer

    async def run(self, p: m.TasksRun, channel: Channel, holder: str | None) -> TaskResult:
        if p.local:
            return await self.local.run(p, channel, holder)
        await self.recovered.wait()
        # progress from whichever node runs it, coalesced for a slow reader as a local
        # task's is
        latest = Latest(channel, "task.progress", held=True)

        def accepted(task_id: str) -> None:
            channel.notify("task.accepted", {"task_id": task_id})
            latest.release()

        try:
            return await self.desk.run(self._admitted(p), accepted, latest.send, holder)
        finally:
            latest.close()

    async def get(self, task_id: str, *, wait: bool) -> TaskInfo:
        await self.recovered.wait()
        found = await self.node.task(task_id, wait=wait)
        return found if found is not None else await self.local.get(task_id, wait=wait)

    def holds(self, task_id: str) -> bool:
        return self.local.holds(task_id)

    async def input_of(self, task_id: str) -> msgspec.Raw | None:
        """A cluster task's input from its record, the one its workers are given (decision
        2045); one the cluster has not is this node's own."""
        try:
            kept = await records.input_of(self.desk.redis, self.desk.keys, task_id)
        except RedisError as exc:
            if self.local.holds(task_id):  # this node's engine still knows it (node.task)
                return await self.local.input_of(task_id)
            raise unavailable(self.node.settings, exc,
                              f"task {task_id}'s input cannot be read") from None
        return kept if kept is not None else await self.local.input_of(task_id)

    async def list(self, p: m.TasksList, sees: Sees | None = None) -> Page:
        if p.local:
            return await self.local.list(p, sees)
        await self.recovered.wait()
        since, limit = listing_window(p)
        if limit == 0:
            return [], None
        return await self.desk.list(p, since, limit, sees)

    async def cancel(self, task_id: str) -> TaskInfo:
        await self.recovered.wait()
        found = await self.node.cancel(task_id)
        return found if found is not None else await self.local.cancel(task_id)
