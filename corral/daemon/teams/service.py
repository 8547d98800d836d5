"""The teams in the daemon (docs/teams.md): their calls kept (store.py; on a cluster node,
in Redis, a dead node's taken over here), resumed after a restart where their steps say
they stopped, and each shown as a task of the team (`corral task ID`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ... import jsonrpc
from ...jsonrpc import RpcError
from ...supervisor.agents import Agents
from ...supervisor.durable import CALL_ENDED, CallHandover
from ...supervisor.durable.tasks import Durables
from ...supervisor.tasks import TaskManager
from ...supervisor.teams import TeamSpec
from ...supervisor.teams.call import KIND, TeamCall
from ...supervisor.teams.calls import Teams, error_of
from ...supervisor.teams.tools import LeaderTools
from ...supervisor.tools import Tools
from ...taskviews import TaskInfo
from ...text import plural
from ..caller import Caller
from ..defcatalog import Check, table_of
from ..store import StateStore
from ..storeschema import StoreError
from .catalog import TeamCatalog, against
from .store import TeamCalls


class TeamService(Teams):
    report: Callable[[str], None]  # (Teams' may be None; a service's is always given)

    def __init__(self, agents: Agents, engine: TaskManager, store: StateStore,
                 report: Callable[[str], None], leaders: LeaderTools | None = None, *,
                 traced: bool = False, tools: Tools | None = None,
                 durables: Durables | None = None) -> None:
        """`durables`: a cluster node's (its calls kept in Redis, a copy of each it
        drives or is asked about in `store`, which `rows` reads)."""
        self.tools = tools  # the MCP servers, whose names a team's may not take
        self.rows = TeamCalls(store)
        self.shared = durables.store if durables is not None else None
        self.catalog = TeamCatalog(store)
        self.catalog.restore(report)
        super().__init__(engine, self.rows, report, leaders, traced, durables)
        self.agents = agents
        self._agent_tenant = agents.tenancy.tenant_of  # None: no such agent
        self.recovered.clear()  # set once the task journal's tasks are back (recover)
        engine.stream.subscribe(self._handed_over, CallHandover)

    # the config file's teams (set by configure: a reload) and the runtime's, as one
    @property
    def specs(self) -> dict[str, TeamSpec]:
        return self.catalog.specs()

    @specs.setter
    def specs(self, config: dict[str, TeamSpec]) -> None:
        self.catalog.configure(config)

    # -- the Python API (as AgentOS's add_team; docs/teams.md) ----------------------------
    async def add_team(self, name: str, definition: TeamSpec | dict[str, Any], *,
                       who: str = "python api") -> int:
        """Kept and revisioned as `corral teams add` keeps it (checked against every agent
        and MCP server); its revision."""
        table = table_of(definition) if isinstance(definition, TeamSpec) else definition
        await self.catalog.add({name: table}, who, None, self.check(lambda agent: True))
        rev = self.catalog.revision_of(name)
        assert rev is not None
        return rev.revision

    async def remove_team(self, name: str, *, who: str = "python api") -> None:
        await self.catalog.remove([name], who, None)

    def check(self, seen: Callable[[str], bool]) -> Check[TeamSpec]:
        """`seen`: the agents the caller sees."""
        servers = list(self.tools.servers) if self.tools is not None else []
        return against(self._agent_tenant, seen, self.specs, servers)

    def defined(self, name: str) -> TeamSpec | None:
        return self.specs.get(name)

    def tenant_of(self, name: str) -> str | None:
        """A team's tenant (its own, else its agents': checked one on load), None when
        there is no such team or its agents are gone."""
        spec = self.specs.get(name)
        if spec is None:
            return None
        return spec.tenant if spec.tenant is not None else self._agent_tenant(spec.members[0])

    def recover(self) -> None:
        """Every call the previous daemon left running, driven on from its steps (once
        the task journal's tasks are back in the engine, so a recorded task is found)."""
        # (a cluster node's are the cluster's, taken by its beat: none resumed here)
        calls = self.rows.unfinished_calls() if self.shared is None else []
        self.resume(calls)
        self.recovered.set()
        if calls:
            self.report(f"teams: {plural(len(calls), 'unfinished call')} resumed")

    def _handed_over(self, e: CallHandover) -> None:
        if e.record.kind == KIND and e.record.call_id not in self.live:
            self.resume([TeamCall.kept(e.record)])
            self.report(f"teams: call {e.record.call_id} ({e.record.name}) taken over "
                        f"from {e.holder}")

    async def read(self, call_id: str | None = None, newest: int = 0) -> None:
        """On a cluster: this node's copies of a call or the `newest` calls refreshed from
        Redis; a call this node drives, or one ended here, is its own."""
        if self.shared is None:
            return
        if call_id is None:
            ids = [i for i in await self.shared.newest(KIND, newest) if i not in self.live]
            await self.shared.copy(ids)
            await self._made(len(ids))
            return
        if call_id in self.live:
            return
        kept = self.rows.call(call_id)
        if kept is not None and kept.status in CALL_ENDED:
            return
        await self.shared.copy([call_id])
        if kept is None and self.rows.call(call_id) is not None:  # (not a task's id)
            await self._made(1)

    async def start(self, name: str, call_input: Any, traceparent: str | None = None,
                    tracestate: str | None = None) -> TeamCall:
        call = await super().start(name, call_input, traceparent, tracestate)
        await self._made(1)
        return call

    async def _made(self, n: int) -> None:
        """Calls made or copied here: the ended past the newest kept pruned now and then."""
        try:
            await self.rows.made(n)
        except StoreError as exc:
            self.report(f"teams: ended calls could not be pruned: {exc}")

    async def cancel(self, call: TeamCall) -> None:
        if self.shared is not None and call.status == "running" \
                and call.call_id not in self.live:
            raise RpcError(jsonrpc.CONFLICT, (
                f"call {call.call_id} is driven by another node of the cluster: cancel it "
                "there (a call is cancelled by the node driving it)"))
        await super().cancel(call)

    def find(self, call_id: str) -> TeamCall | None:
        live = self.calls.live.get(call_id)
        return live[0] if live is not None else self.rows.call(call_id)

    def call(self, call_id: str) -> TeamCall:
        call = self.find(call_id)
        if call is None:
            raise jsonrpc.not_found("task", call_id)
        return call


def call_info(call: TeamCall) -> TaskInfo:
    """A call as `corral task ID` shows it: a task of the team, its progress its steps."""
    started = min((s.started for s in call.rows.values() if s.started is not None),
                  default=None)
    steps: list[dict[str, Any]] = [
        {"step": s.step, "task_id": s.task_id, "status": s.status}
        | ({"error": s.error} if s.error else {})
        for s in sorted(call.rows.values(), key=lambda s: s.started or 0.0)]
    return TaskInfo(task_id=call.call_id, agent=call.team,
                    status=call.status, priority=0, created=call.created, started=started,
                    finished=call.ended, tool_calls=0,
                    progress={"mode": call.spec.mode, "steps": steps},
                    output=call.output, error=error_of(call), attempts=[],
                    tenant=call.tenant)  # whose the call is (records.sees_task)


def sees_call(caller: Caller, call: TeamCall) -> bool:
    """Whether a call is the caller's: made for the caller's tenant, every agent of the
    team it started on seen, whoever holds the team's name now."""
    return not caller.limited or caller.owns(call.spec.agents, call.tenant)
