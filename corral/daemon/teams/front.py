"""The task front with teams: a task that names a team is a call of it, answered as a
task; any other goes on to the front the daemon chose unchanged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from ... import jsonrpc
from ... import methods as m
from ...jsonrpc import RpcError
from ...supervisor.tasks import Unfinished
from ...supervisor.teams.call import TeamCall
from ...supervisor.teams.calls import result
from ...taskviews import TaskInfo, TaskResult
from ...timeouts import waited
from ..caller import Channel
from ..tasks.front import Page, Sees, TaskFront, accepted, listing_window
from .service import TeamService, call_info

# a team's call takes no option of a task (taskoptions.py): why, for those a caller may
# look for (any other: it is no one agent's task)
_WHY_NOT = {
    "delay": "its members' tasks run at once",
    "not_before": "its members' tasks run at once",
    "session": "a session is one agent's",
    "timeout": "its tasks' timeout is the team's `timeout`",
    "retry": "its tasks' retries are the team's `retries`",
    "priority": "its tasks run at their agents' order",
    "idempotency_key": "a call's key is the Idempotency-Key of POST /teams/NAME/calls",
}


def _refused(p: m.TaskParams) -> None:
    given = p.given()
    if given:
        key = given[0]
        why = _WHY_NOT.get(key, "a team's call is no one agent's task")
        raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: {p.agent} is a team: "
                                               f"a team's call takes no {key} ({why})")


class TeamFront:
    def __init__(self, inner: TaskFront, teams: TeamService) -> None:
        self.inner = inner
        self.teams = teams

    @property
    def refusing(self) -> str | None:
        return self.inner.refusing

    def recover(self, records: list[Unfinished],
                reattached: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.inner.recover(records, reattached)

    async def _start(self, p: m.TaskParams) -> tuple[TeamCall, asyncio.Future[None] | None]:
        """The call started, and its driver (None: it ended already)."""
        _refused(p)
        if self.refusing is not None:
            raise RpcError(jsonrpc.INTERNAL_ERROR, f"{self.refusing}; the task was not "
                                                   "accepted")
        await self.teams.recovered.wait()
        call = await self.teams.start(p.agent, msgspec.json.decode(p.input),
                                      p.traceparent, p.tracestate)
        live = self.teams.calls.live.get(call.call_id)
        return call, live[1] if live is not None else None

    def submit(self, p: m.TasksSubmit, channel: Channel, holder: str | None
               ) -> Coroutine[Any, Any, m.TaskAccepted]:
        """An agent's task: the inner front's own submission (no frame of this one at
        each of its resumes)."""
        if p.agent not in self.teams:
            return self.inner.submit(p, channel, holder)
        return self._call(p)

    async def _call(self, p: m.TasksSubmit) -> m.TaskAccepted:
        call, driver = await self._start(p)
        if p.wait is not None and driver is not None:
            with contextlib.suppress(TimeoutError):
                await waited(driver, p.wait)
        return accepted(call.call_id, call.status,
                        None if call.status == "running" else result(call))

    async def run(self, p: m.TasksRun, channel: Channel, holder: str | None) -> TaskResult:
        if p.agent not in self.teams:
            return await self.inner.run(p, channel, holder)
        call, driver = await self._start(p)
        channel.notify("task.accepted", {"task_id": call.call_id})
        if driver is not None:
            await asyncio.shield(driver)  # a caller that goes away leaves the call
        return result(call)

    async def get(self, task_id: str, *, wait: bool) -> TaskInfo:
        if self.inner.holds(task_id):  # (no team's call: not looked for in its rows)
            return await self.inner.get(task_id, wait=wait)
        await self.teams.read(task_id)  # (on a cluster: as Redis holds it now)
        call = self.teams.find(task_id)
        if call is None:
            return await self.inner.get(task_id, wait=wait)
        if wait:
            await self.teams.wait(task_id, None)
            call = self.teams.call(task_id)
        return call_info(call)

    def holds(self, task_id: str) -> bool:
        return self.inner.holds(task_id)

    async def input_of(self, task_id: str) -> msgspec.Raw | None:
        await self.teams.read(task_id)
        call = self.teams.find(task_id)
        if call is None:
            return await self.inner.input_of(task_id)
        return msgspec.Raw(msgspec.json.encode(call.input))

    async def list(self, p: m.TasksList, sees: Sees | None = None) -> Page:
        if p.agent is None or p.agent not in self.teams:
            return await self.inner.list(p, sees)
        # a team's calls, paged as tasks are: newest last, the cursor the oldest's id
        since, limit = listing_window(p)
        if limit == 0:
            return [], None
        await self.teams.read(newest=limit + 1)  # (on a cluster: the newest page first)
        # a limited caller, which sees the team now, pages through the calls made for
        # its tenant then: not those of an earlier team of the name
        tenant = self.teams.tenant_of(p.agent) if sees is not None else None
        page = self.teams.rows.listing(p.agent, p.status, since, p.before, limit + 1,
                                       tenant)
        page.reverse()
        if len(page) <= limit:
            return page, None
        return page[1:], page[1].task_id

    async def cancel(self, task_id: str) -> TaskInfo:
        await self.teams.read(task_id)
        call = self.teams.find(task_id)
        if call is None:
            return await self.inner.cancel(task_id)
        await self.teams.cancel(call)
        return call_info(call)
