"""The team methods' handlers (corral.methods.definitions). A limited caller sees a team
only when it sees every agent of it, as a workflow: each method's declaration names the
record the dispatcher asks of first (records.py)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ... import jsonrpc
from ... import methods as m
from ...supervisor.configload import skill_names, skill_twin
from ...supervisor.teams import TeamSpec
from .. import defcatalog
from ..api import Commands
from ..caller import Caller, Channel
from ..defcatalog import Check
from ..services import Services
from ..tasks import TaskFront
from .catalog import TeamCatalog
from .service import TeamService


class TeamServices(msgspec.Struct, frozen=True):
    """With what the methods every kind of definition has (defcatalog.Kind) ask of a team."""

    teams: TeamService  # [teams.NAME] and their calls
    catalog: TeamCatalog  # the teams added at runtime, with revisions
    tasks: TaskFront  # a team's calls are tasks of its name
    # the operator's own skills' names, none of which a team may have (read when asked)
    skills: Callable[[], list[str]]

    def defined(self, name: str) -> tuple[TeamSpec, list[str]]:
        spec = self.catalog.specs().get(name)
        if spec is None:
            raise jsonrpc.not_found("team", name)
        return spec, spec.agents

    def tenant(self, name: str) -> str | None:
        return self.teams.tenant_of(name)

    def check(self, caller: Caller) -> Check[TeamSpec]:
        return self.teams.check(caller.sees)


def team_services(d: Services) -> TeamServices:
    return TeamServices(d.teams, d.teams.catalog, d.tasks,
                        lambda: skill_names(d.fleet.gateway, d.fleet.config_dir))


COMMANDS: Commands[Services, TeamServices] = Commands(team_services)
implements = COMMANDS.implements


@implements(m.TeamsList)
async def teams_list(d: TeamServices, p: m.TeamsList, caller: Caller, c: Channel) -> m.TeamList:
    return m.TeamList(teams=[
        m.TeamEntry(name=name, mode=spec.mode, members=spec.members, agents=spec.agents,
                    description=spec.description,
                    revision=rev.revision if (rev := d.catalog.revision_of(name)) else None,
                    tenant=d.teams.tenant_of(name))
        for name, spec in sorted(d.catalog.specs().items())])


@implements(m.TeamsAdd)
async def teams_add(d: TeamServices, p: m.TeamsAdd, caller: Caller, c: Channel) -> m.AddResult:
    twin = skill_twin(p.teams, d.skills(), "team")  # (corral__NAME names one thing: 1741)
    if twin is not None:
        raise jsonrpc.RpcError(jsonrpc.INVALID_PARAMS, f"{m.TeamsAdd.declared.name}: {twin}")
    return m.AddResult(added=await d.catalog.add(p.teams, caller.who, caller.tenant,
                                                 d.check(caller)))


implements(m.TeamsDescribe)(defcatalog.describe)
implements(m.TeamsUpdate)(defcatalog.update)
implements(m.TeamsRemove)(defcatalog.remove)
implements(m.TeamsHistory)(defcatalog.history)
implements(m.TeamsRollback)(defcatalog.rollback)


# -- a team's calls (methods/calls.py): the task front's own path for a team's name
# (teams/front.py), the team and the call asked first as a workflow and its run are ------
async def _call(d: TeamServices, call_id: str) -> None:
    """NOT_FOUND for a call of no team there is (not a task's words)."""
    await d.teams.read(call_id)
    if d.teams.find(call_id) is None:
        raise jsonrpc.not_found("call", call_id)


@implements(m.TeamsCall)
async def teams_call(d: TeamServices, p: m.TeamsCall, caller: Caller, c: Channel
                     ) -> m.TaskAccepted:
    d.defined(p.name)
    return await d.tasks.submit(m.TasksSubmit(
        agent=p.name, input=p.input, wait=p.wait, traceparent=p.traceparent,
        tracestate=p.tracestate), c, caller.holder)


@implements(m.CallsGet)
async def calls_get(d: TeamServices, p: m.CallsGet, caller: Caller, c: Channel) -> m.TaskInfo:
    await _call(d, p.call_id)
    return await d.tasks.get(p.call_id, wait=p.wait)


@implements(m.CallsList)
async def calls_list(d: TeamServices, p: m.CallsList, caller: Caller, c: Channel) -> m.TaskList:
    d.defined(p.name)
    calls, older = await d.tasks.list(m.TasksList(
        agent=p.name, limit=p.limit, status=p.status, since=p.since, before=p.before),
        caller.sees_record if caller.limited else None)
    return m.TaskList(tasks=calls, next=older if older is not None else msgspec.UNSET)


@implements(m.CallsCancel)
async def calls_cancel(d: TeamServices, p: m.CallsCancel, caller: Caller, c: Channel
                       ) -> m.TaskInfo:
    await _call(d, p.call_id)
    return await d.tasks.cancel(p.call_id)
