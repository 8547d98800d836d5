"""A team's call driven to its end on the engine's tasks, by its mode. The rule that makes
a member succeed at most once per call (as a workflow's step, daemon/workflows/runner.py):
a step's task id is saved in the call before its task is submitted, and a step that names
a task is only ever waited for (submitted again under that id only when the engine never
had it: the daemon stopped between the two writes). A call resumed after a restart skips
every step that ended."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec

from ...jsonrpc import RpcError
from ...taskoptions import step_options
from ...taskviews import TaskInfo
from ..tasks import TERMINAL, TaskManager
from ..tasks.ids import new_id
from ..tasks.recorded import RecordedTask, outcome
from .call import STEP_ENDED, CallStep, CallStore, TeamCall
from .definition import TeamError
from .route import by_rules, named, router_input


class TeamRunner:
    def __init__(self, engine: TaskManager, store: CallStore) -> None:
        self.engine = engine
        self.store = store
        self.leaders: dict[str, TeamCall] = {}  # a running leader's task id -> its call

    def adopt(self, call: TeamCall) -> None:
        """A call resumed after a restart: its leader's task, back in the engine and
        perhaps dispatched before the call's driver first runs, has its members' tools
        from the start."""
        st = call.steps.get("leader")
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
        bad = [m for m, st in zip(members, steps, strict=True) if st.status != "succeeded"]
        if bad:
            call.status = "failed"
            call.error = "; ".join(_why(call, "member", m, call.steps[f"member:{m}"])
                                   for m in bad)
        else:
            call.status = "succeeded"

    async def _coordinate(self, call: TeamCall) -> None:
        leader = call.spec.leader
        assert leader is not None
        self._ended(call, leader, await self.step(call, "leader", leader, call.input),
                    role="leader")

    def _ended(self, call: TeamCall, agent: str, st: CallStep, role: str = "member") -> None:
        call.output = st.output
        if st.status == "succeeded":
            call.status = "succeeded"
        else:
            call.status, call.error = "failed", _why(call, role, agent, st)

    # -- a step: one task, at most once --------------------------------------------------
    async def step(self, call: TeamCall, key: str, agent: str, task_input: Any,
                   context: dict[str, str] | None = None) -> CallStep:
        """A step to its end; `context`: the trace context its task is a child of (else
        the call's caller's)."""
        st = call.steps.get(key)
        if st is not None and st.status in STEP_ENDED:
            return st
        if st is None:
            st = CallStep(key, "running", new_id(), time.time())
            await self._save(call, st)  # the id is the call's before the task exists
        assert st.task_id is not None
        leading = key == "leader"
        if leading:
            self.leaders[st.task_id] = call  # its tool list has the members while it runs
        try:
            info = await self._outcome(agent, call, st.task_id, task_input, context)
        except RpcError as exc:  # refused by the engine: the step fails
            return await self._end(call, st, "failed", None, exc.message)
        finally:
            if leading:
                self.leaders.pop(st.task_id, None)
        output = (msgspec.json.decode(info.output) if isinstance(info.output, msgspec.Raw)
                  else info.output)
        error = info.error.message if info.error is not None else None
        return await self._end(call, st, str(info.status), output, error)

    async def _outcome(self, agent: str, call: TeamCall, task_id: str, task_input: Any,
                       context: dict[str, str] | None) -> TaskInfo:
        """A step's task to its end (recorded.outcome), submitted under the id the call
        recorded as a child of the caller's trace context, to its agent only while that
        is of the call's tenant."""
        parent = context if context is not None else {
            "traceparent": call.traceparent or "", "tracestate": call.tracestate or ""}
        recorded = RecordedTask(task_id, agent, call.tenant)
        return await outcome(self.engine, recorded, lambda: self.engine.submit(
            agent, task_input, step_options(call.spec.timeout, call.spec.retries),
            task_id=task_id, traceparent=parent.get("traceparent") or None,
            tracestate=parent.get("tracestate") or None))

    async def _end(self, call: TeamCall, st: CallStep, status: str, output: Any,
                   error: str | None) -> CallStep:
        ended = CallStep(st.key, status, st.task_id, st.started, time.time(), output, error)
        await self._save(call, ended)
        return ended

    async def _save(self, call: TeamCall, st: CallStep) -> None:
        await self.store.save_step(call.call_id, st)
        call.steps[st.key] = st

    async def abandon(self, call: TeamCall) -> None:
        """A call cancelled: its steps' tasks still queued or running cancelled, and
        their rows ended so."""
        now = time.time()
        for st in [s for s in call.steps.values() if s.status == "running"]:
            if st.task_id is not None:
                task = self.engine.active.get(st.task_id)
                if task is not None and task.status not in TERMINAL:
                    with contextlib.suppress(RpcError):
                        self.engine.cancel(st.task_id)
            await self._save(call, CallStep(st.key, "cancelled", st.task_id, st.started,
                                            now, None, "the call was cancelled"))


def _outcome(st: CallStep) -> dict[str, Any]:
    """A broadcast member's line of the joined result."""
    out: dict[str, Any] = {"status": st.status, "task_id": st.task_id, "output": st.output}
    if st.error is not None:
        out["error"] = st.error
    return out


def _why(call: TeamCall, role: str, agent: str, st: CallStep) -> str:
    return (f"team {call.team}: {role} {agent} {st.status} (task {st.task_id})"
            + (f": {st.error}" if st.error else ""))
