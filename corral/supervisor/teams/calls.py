"""Teams on an engine: the definitions, each call started (saved before it is answered) and
driven to its one outcome (the Python API's: docs/teams.md, "The Python API")."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...taskviews import TaskFailure, TaskResult
from ...tracecontext import parse_or_refuse
from ..durable import CALL_ENDED
from ..durable.calls import Calls
from ..durable.store import DurableStore, MemoryStore
from ..durable.tasks import Durables
from ..tasks import TaskManager
from ..tasks.ids import new_id
from .call import TeamCall
from .check import check_team
from .definition import TeamError, TeamSpec
from .runner import TeamRunner
from .tools import LeaderTools


class Teams:
    def __init__(self, engine: TaskManager, store: DurableStore | None = None,
                 report: Callable[[str], None] | None = None,
                 tools: LeaderTools | None = None, traced: bool = False,
                 durables: Durables | None = None) -> None:
        """`tools`: the interceptor giving a coordinate leader its members as tools (None: no
        coordinate team is called); `traced`: its tasks traced; `durables`: a cluster node's."""
        self.engine = engine
        self.store: DurableStore = (durables.store if durables is not None
                                    else store if store is not None else MemoryStore())
        self.runner = TeamRunner(engine, self.store, report, durables)
        self.leader_tools = tools
        if tools is not None:
            tools.serve(self.runner)
        self.traced = traced
        self.report = report
        self.specs: dict[str, TeamSpec] = {}
        self.calls: Calls[TeamCall] = Calls(
            self.runner, self.runner.steps, durables.store if durables is not None else None)
        self.live = self.calls.live  # the calls driven now, by id
        # no call's step is submitted before the engine has the journal's tasks back
        self.recovered = self.calls.recovered
        self.recovered.set()

    def configure(self, specs: Mapping[str, TeamSpec]) -> None:
        """The teams (a reload replaces them; a call keeps the definition it started on)."""
        self.specs = dict(specs)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def spec(self, name: str) -> TeamSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise jsonrpc.not_found("team", name)
        return spec

    def _checked(self, name: str) -> str:
        """The team checked against the agents now (another tenant's is none to it); its tenant."""
        agents = self.engine.sup.agents
        spec = self.spec(name)

        def tenant_of(agent: str) -> str | None:
            there = agents[agent].spec.tenant if agent in agents else None
            return there if spec.tenant is None or there == spec.tenant else None
        with jsonrpc.invalid_params(TeamError):
            return check_team(name, spec, teams=self.specs, tenant_of=tenant_of)

    # -- calls --------------------------------------------------------------------------
    async def start(self, name: str, call_input: Any, traceparent: str | None = None,
                    tracestate: str | None = None) -> TeamCall:
        tenant = self._checked(name)
        if self.leader_tools is None and self.spec(name).mode == "coordinate":
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"team {name} is coordinate: its leader calls its members as "
                           "tools, which an engine gives only when made with LeaderTools "
                           "among its interceptors")
        if traceparent and self.traced:
            # refused before the call, as a task's is before it is accepted
            parse_or_refuse(traceparent, tracestate)
        call = TeamCall(new_id(), name, self.spec(name), call_input, "running", time.time(),
                        tenant=tenant, traceparent=traceparent, tracestate=tracestate)
        await self.store.save_call(call.record())  # durable before it is answered
        self.calls.drive(call)
        return call

    async def run(self, name: str, call_input: Any) -> TaskResult:
        """The Python API's: a call to its end."""
        call = await self.start(name, call_input)
        await self.wait(call.call_id, None)
        return result(call)

    def resume(self, calls: list[TeamCall]) -> None:
        for call in calls:
            if call.call_id not in self.calls.live:
                self.runner.adopt(call)
                self.calls.drive(call)

    async def wait(self, call_id: str, timeout: float | None) -> None:
        await self.calls.wait(call_id, timeout)

    async def cancel(self, call: TeamCall) -> None:
        if call.status in CALL_ENDED or not await self.calls.cancel(call.call_id,
                                                                   "cancelled"):
            raise RpcError(jsonrpc.CONFLICT,
                           f"task {call.call_id} already finished ({call.status})")

    async def close(self) -> None:
        await self.calls.close()


def error_of(call: TeamCall) -> TaskFailure | None:
    if call.error is None:
        return None
    code = jsonrpc.REQUEST_CANCELLED if call.status == "cancelled" else jsonrpc.TASK_FAILED
    return TaskFailure(code=code, message=call.error)


def result(call: TeamCall) -> TaskResult:
    """The call as `corral run TEAM` answers it (its steps' tasks have the attempts)."""
    return TaskResult(task_id=call.call_id, status=call.status, output=call.output,
                      error=error_of(call), attempts=[])
