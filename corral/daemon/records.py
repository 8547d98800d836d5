"""Whose the record a call names is, asked before its handler runs (visibility.AgentRule's
`record`). A limited caller reaches only its own records; any other is answered in the
words a record that does not exist is answered with, so that the answer does not tell it
exists. Handlers then look a record up for what it is, never for whose.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.labels import session_record, started_record
from ..supervisor.tasks import TaskManager
from ..supervisor.tasks.sessions import SessionBook, Sessions, no_such_session
from ..supervisor.workflows import WorkflowError, compile_workflow
from .caller import Caller
from .clusterpeer import ClusterPeer
from .deciders import AskBook
from .schedules import ScheduleService
from .tasks import TaskFront
from .teams import TeamService
from .teams.service import sees_call
from .workflows import WorkflowService


class Holders(Protocol):
    """The services a record is looked up in (the daemon's Services)."""

    @property
    def tasks(self) -> TaskFront: ...

    @property
    def teams(self) -> TeamService: ...

    @property
    def workflows(self) -> WorkflowService: ...

    @property
    def schedules(self) -> ScheduleService: ...

    @property
    def sessions(self) -> Sessions: ...

    @property
    def task_engine(self) -> TaskManager: ...

    @property
    def cluster(self) -> ClusterPeer: ...


# a record's check: the services (the Dispatcher's context, Holders), the call's params,
# the limited caller; raises NOT_FOUND
Record = Callable[[Any, Any, Caller], Awaitable[None]]


def _mine(caller: Caller, agents: Iterable[str], tenant: str | None, what: str,
          name: str) -> None:
    if not caller.owns(list(agents), tenant):
        raise jsonrpc.not_found(what, name)


def team(field: str) -> Record:
    async def check(d: Holders, params: Any, caller: Caller) -> None:
        named = getattr(params, field)
        for name in [named] if isinstance(named, str) else named:
            spec = d.teams.defined(name)
            if spec is None:
                raise jsonrpc.not_found("team", name)
            _mine(caller, spec.agents, d.teams.tenant_of(name), "team", name)

    return check


async def team_past(d: Holders, params: Any, caller: Caller) -> None:
    """A team there is, or one removed that was last of the caller's tenant (its history,
    a rollback)."""
    catalog = d.teams.catalog
    if params.name in catalog.config:
        await team("name")(d, params, caller)
        return
    last = catalog.last_defined(params.name, caller.tenant)
    if last is None:
        raise jsonrpc.not_found("team", params.name)
    _mine(caller, last[0].agents, last[1], "team", params.name)


def task_agent(field: str) -> Record:
    """A task's agent that is a team's name: a team's calls are tasks of its name, reached
    only as the team is; an agent's name is the rule's `check`."""
    async def check(d: Holders, params: Any, caller: Caller) -> None:
        _team_seen(d, getattr(params, field), caller)

    return check


def _team_seen(d: Holders, name: Any, caller: Caller) -> None:
    """`task_agent`'s check, called as it is (no coroutine of its own: every submission's)."""
    spec = d.teams.defined(name) if name is not None else None
    if spec is not None:
        _mine(caller, spec.agents, d.teams.tenant_of(name), "agent", name)


def sees_task(caller: Caller, task: Any) -> bool:
    """Whether a task is the caller's: asked of the tenant its agent was of when it was
    accepted, never of who holds the name now (a team's call, of no tenant: the name's
    holder)."""
    if task.tenant is None:
        return caller.sees(task.agent)
    return caller.sees_record(task.agent, task.tenant)


def task(field: str) -> Record:
    """A task named by its id (sees_task); a team's call made for the caller's tenant,
    every agent of its team seen, whoever holds the team's name now."""
    async def check(d: Holders, params: Any, caller: Caller) -> None:
        task_id = getattr(params, field)
        info = await d.tasks.get(task_id, wait=False)  # an unknown task: not found
        found = None if d.tasks.holds(task_id) else d.teams.find(task_id)
        if found is not None:
            mine = sees_call(caller, found)
        else:
            spec = d.teams.defined(info.agent)
            mine = spec is None or caller.owns(spec.agents, d.teams.tenant_of(info.agent))
        if not (mine and sees_task(caller, info)) or not await started(d, caller, task_id):
            raise jsonrpc.not_found("task", task_id)

    return check


async def started(d: Holders, caller: Caller, task_id: str) -> bool:
    """Whether the caller may act on a task it sees by its agent: any task, but an
    anonymous caller only one it started (handing.py), in the home that holds it (issue
    88: no one reaches the operator's tasks of its agent, nor the operator's turns of its
    session, which hold its label)."""
    return not caller.anonymous or await _started_by(d, caller, task_id)


async def _started_by(d: Holders, caller: Caller, key: str) -> bool:
    for store in (d.task_engine.labels, d.cluster.labels):
        if caller.who in await store.read(started_record(key)):
            return True
    return False


def submitted(field: str) -> Record:
    """A task submitted (tasks.submit, tasks.run): its agent (task_agent) and the session
    it names: an anonymous caller's a new one or one it started (an A2A contextId: not
    the operator's session of its agent, whose state its turn would read and write)."""
    async def check(d: Holders, params: Any, caller: Caller) -> None:
        _team_seen(d, getattr(params, field), caller)
        name = params.session
        if name is not None and caller.anonymous and \
                not await _continues(d, caller, params.agent, name):
            raise RpcError(jsonrpc.INVALID_PARAMS, f"contextId {jsonrpc.visible(name)} is "
                           "a context this caller did not start: an anonymous caller "
                           "continues only its own (send no contextId to begin one)")

    return check


async def _continues(d: Holders, caller: Caller, agent: str, name: str) -> bool:
    """Whether session `name` of the agent is the caller's to continue: one it started,
    or none yet (no session of the name, here nor in the cluster, and no task of the
    agent whose own context the name is)."""
    try:
        kept = await SessionBook(d.sessions, d.cluster.session_stores).info(
            caller.tenant, agent, name, caller.sees_record)
    except RpcError as missing:
        if missing.code != jsonrpc.NOT_FOUND:
            raise
        return await _no_task_of(d, caller, agent, name)
    return await _started_by(d, caller, session_record(kept.session.tenant or "", agent, name))


async def _no_task_of(d: Holders, caller: Caller, agent: str, name: str) -> bool:
    """No task of the agent is `name`, or the caller started it (a context no later
    message named yet is its first task's id: a2a/mapping.py)."""
    try:
        info = await d.tasks.get(name, wait=False)
    except RpcError as exc:
        if exc.code != jsonrpc.NOT_FOUND:
            raise
        return True
    return info.agent != agent or await _started_by(d, caller, name)


def ask(field: str) -> Record:
    """An ask of the inbox named by its id: its task's, of the tenant the task's agent
    was of when it was accepted (sees_task; docs/approvals.md)."""
    async def check(d: Holders, params: Any, caller: Caller) -> None:
        ask_id = getattr(params, field)
        found = await AskBook(d.task_engine.inbox, d.cluster.ask_shelves).read(ask_id)
        if found is None or not sees_task(caller, found) or \
                not await started(d, caller, found.task_id):
            raise jsonrpc.not_found("ask", ask_id)

    return check


async def call(d: Holders, params: Any, caller: Caller) -> None:
    found = d.teams.find(params.call_id)
    if found is None or not sees_call(caller, found):
        raise jsonrpc.not_found("call", params.call_id)


def workflow(field: str) -> Record:
    async def check(d: Holders, params: Any, caller: Caller) -> None:
        named = getattr(params, field)
        catalog = d.workflows.catalog
        for name in [named] if isinstance(named, str) else named:
            wf = catalog.workflow(name)  # an unknown one: not found
            _mine(caller, wf.agents, d.workflows.tenant(name), "workflow", wf.name)

    return check


async def workflow_past(d: Holders, params: Any, caller: Caller) -> None:
    """A workflow there is, or one removed that was last of the caller's tenant."""
    catalog = d.workflows.catalog
    if params.name in catalog.config:
        await workflow("name")(d, params, caller)
        return
    last = catalog.last_defined(params.name, caller.tenant)
    try:
        wf = compile_workflow(params.name, last[0]) if last is not None else None
    except WorkflowError:
        wf = None
    if last is None or wf is None:
        raise jsonrpc.not_found("workflow", params.name)
    _mine(caller, wf.agents, last[1], "workflow", wf.name)


async def run(d: Holders, params: Any, caller: Caller) -> None:
    found = d.workflows.get(params.run_id)  # an unknown one: not found
    _mine(caller, found.agents, found.tenant, "run", found.run_id)


async def schedule(d: Holders, params: Any, caller: Caller) -> None:
    """A schedule: whose it is, is whose its agents were in the file, not who holds
    their names now."""
    entry = d.schedules.entry(d.schedules.get(params.name))  # unknown: not found
    _mine(caller, entry.agents, entry.tenant, "schedule", params.name)


async def session(d: Holders, params: Any, caller: Caller) -> None:
    """A session named by its agent and name, kept here or in the cluster: one that is not
    the caller's record reads as absent."""
    kept = await SessionBook(d.sessions, d.cluster.session_stores).info(
        caller.tenant, params.agent, params.session, caller.sees_record)
    if not caller.sees_record(kept.session.agent, kept.session.tenant):
        raise no_such_session(params.agent, params.session)
