"""A team's call planned by its mode on the durable engine: route, broadcast, coordinate;
each a step, a task of its agent run at most once per call (on a cluster:
docs/teams.md#on-a-cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from msgspec.structs import replace

from ...jsonrpc import RpcError
from ...taskoptions import step_options
from ..durable.engine import StepEngine, Work
from ..durable.record import STEP_ENDED, StepEnd, StepRow
from ..durable.store import DurableStore
from ..durable.tasks import AgentTask, Durables, StepTasks, StepWork
from ..tasks import TaskManager
from .call import TeamCall, key_of
from .definition import TeamError
from .route import by_rules, named, router_input


class TeamRunner:
    """The teams' planner (durable/calls.Planner)."""

    def __init__(self, engine: TaskManager, store: DurableStore,
                 report: Callable[[str], None] | None = None,
                 durables: Durables | None = None) -> None:
        self.engine = engine
        self.leads = StepTasks(engine)  # a leader's task: where its tools are served
        self.tasks: StepWork = durables.tasks if durables is not None else self.leads
        self.steps = StepEngine(store, self)
        self.report = report
        self.leaders: dict[str, TeamCall] = {}  # a running leader's task id -> its call

    def adopt(self, call: TeamCall) -> None:
        """A call resumed after a restart: its leader's task, perhaps dispatched before the
        call's driver first runs, has its members' tools from the start."""
        st = call.rows.get(key_of("leader"))
        if st is not None and st.status == "running" and st.task_id is not None:
            self.leaders[st.task_id] = call

    async def drive(self, call: TeamCall) -> None:
        """The call's status, output and error set (saved by the caller)."""
        try:
            mode = call.spec.mode
            if mode == "route":
                await self._route(call)
            elif mode == "broadcast":
                await self._broadcast(call)
            else:
                await self._coordinate(call)
        except TeamError as exc:
            call.status, call.error = "failed", str(exc)

    async def abandon(self, call: TeamCall) -> None:
        await self.steps.abandon(call, StepEnd("cancelled", None, (
            "the call was cancelled" if call.status == "cancelled" else f"the call {call.status}")))

    def timed_out(self, call: TeamCall) -> str:
        return "the call's time passed"  # (a call has no deadline of its own)

    def ended(self, call: TeamCall) -> None:
        return None

    def cancel_task(self, task_id: str) -> None:
        """A step's task cancelled wherever it is (a member's, a leader's): both are asked,
        each doing nothing for a task it does not hold."""
        self.tasks.cancel_task(task_id)
        if self.leads is not self.tasks:
            self.leads.cancel_task(task_id)

    def stopped(self, call: TeamCall, why: str) -> None:
        if self.report is not None:
            self.report(f"teams: call {call.call_id} ({call.team}) stopped: {why}")

    async def _route(self, call: TeamCall) -> None:
        spec = call.spec
        if spec.router is None:
            member = by_rules(call.team, spec, call.input)
        else:
            st = await self.step(call, "router", spec.router,
                                 router_input(spec, call.input))
            if st.status != "succeeded":
                call.status, call.error = "failed", _why(call, "router", spec.router, st)
                return
            member = named(call.team, spec, st.output)
        self._ended(call, member, await self.step(call, f"member:{member}", member,
                                                  call.input))

    async def _broadcast(self, call: TeamCall) -> None:
        members = call.spec.members
        # a step that raises (the store failed) cancels the others: none left to run on
        # unwatched; a member's bad end is no exception (its step's status)
        async with asyncio.TaskGroup() as group:
            running = [group.create_task(self.step(call, f"member:{m}", m, call.input))
                       for m in members]
        steps = [t.result() for t in running]
        call.output = {m: _outcome(st) for m, st in zip(members, steps, strict=True)}
        bad = [(m, st) for m, st in zip(members, steps, strict=True)
               if st.status != "succeeded"]
        if bad:
            call.status = "failed"
            call.error = "; ".join(_why(call, "member", m, st) for m, st in bad)
        else:
            call.status = "succeeded"

    async def _coordinate(self, call: TeamCall) -> None:
        leader = call.spec.leader
        assert leader is not None
        self._ended(call, leader, await self.step(call, "leader", leader, call.input),
                    role="leader")

    def _ended(self, call: TeamCall, agent: str, st: StepRow, role: str = "member") -> None:
        call.output = st.output
        if st.status == "succeeded":
            call.status = "succeeded"
        else:
            call.status, call.error = "failed", _why(call, role, agent, st)

    async def step(self, call: TeamCall, key: str, agent: str, task_input: Any,
                   context: dict[str, str] | None = None) -> StepRow:
        """A step to its end, its output with it; `context`: its task's parent trace context."""
        parent = context if context is not None else {
            "traceparent": call.traceparent or "", "tracestate": call.tracestate or ""}
        work = (self.leads if key == "leader" else self.tasks).work(AgentTask(
            agent, task_input, step_options(call.spec.timeout, call.spec.retries),
            call.tenant, parent.get("traceparent") or None,
            parent.get("tracestate") or None))
        if key == "leader":  # its tool list has the members while it runs
            work = self._leading(call, work)
        try:
            st = await self.steps.step(call, key_of(key), work)
        except RpcError:
            row = call.rows.get(key_of(key))
            if row is None or row.status not in STEP_ENDED:
                raise  # the store refused its row (another node took the call): stop
            return row  # refused by the engine: the step failed, its row says why
        if st.output is None:  # it ended before this driver: read back
            st = replace(st, output=self.steps.output(call, st))
        return st

    def _leading(self, call: TeamCall, work: Work) -> Work:
        async def led(task_id: str) -> StepEnd:
            self.leaders[task_id] = call
            try:
                return await work(task_id)
            finally:
                self.leaders.pop(task_id, None)
        return led


def _outcome(st: StepRow) -> dict[str, Any]:
    out: dict[str, Any] = {"status": st.status, "task_id": st.task_id, "output": st.output}
    if st.error is not None:
        out["error"] = st.error
    return out


def _why(call: TeamCall, role: str, agent: str, st: StepRow) -> str:
    return (f"team {call.team}: {role} {agent} {st.status} (task {st.task_id})"
            + (f": {st.error}" if st.error else ""))
