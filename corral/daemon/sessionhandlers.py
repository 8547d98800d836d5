"""The sessions methods' handlers (corral/methods.py; docs/durable.md#sessions), put in
the daemon's table by commandtable.py. A session is looked up by name, whether its agent runs
or not, and by whose it is (decision 440): a tenant's caller asks for its tenant's; the
operator for those of the tenant that holds the agent's name now, else (its agent gone)
for the one of that name most recently used."""

from __future__ import annotations

from dataclasses import dataclass

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.agents import Agents
from ..supervisor.tasks.sessions import Session, SessionKey, Sessions
from .api import Commands
from .caller import Caller, Channel
from .services import Services


def _session_view(sessions: Sessions, s: Session) -> m.SessionView:
    return m.SessionView(
        agent=s.agent, session=s.name, tasks=s.tasks, created=s.created,
        last_used=s.last_used, holder=s.holder,
        state_bytes=s.state_bytes,
        running=s.current.id if s.current is not None else None, waiting=len(s.line),
        expires=sessions.expires(s), tenant=s.tenant)


def _session(d: SessionServices, caller: Caller, agent: str, name: str) -> Session:
    """The session a caller names: under its tenant (a tenant's caller), else under the
    tenant that holds the agent's name now, else (the agent gone) the most recently used
    of the name; one that is not the caller's record reads as absent."""
    if caller.tenant is not None:
        key = SessionKey(caller.tenant, agent, name)
    elif agent in d.agents:
        key = d.sessions.key_of(agent, name)
    else:
        kept = [s for s in d.sessions.listing(agent) if s.name == name]
        key = max(kept, key=lambda s: s.last_used).ident if kept else d.sessions.key_of(
            agent, name)
    s = d.sessions.get(key)
    if not caller.sees_record(s.agent, s.tenant):
        raise RpcError(jsonrpc.NOT_FOUND, f"no such session: {jsonrpc.visible(name)} of "
                                          f"agent {agent}")
    return s


@dataclass(frozen=True)
class SessionServices:
    sessions: Sessions  # the tasks' sessions
    agents: Agents  # which tenant holds an agent's name now


def session_services(d: Services) -> SessionServices:
    return SessionServices(d.sessions, d.agents)


COMMANDS: Commands[Services, SessionServices] = Commands(session_services)
implements = COMMANDS.implements


@implements(m.SessionsList)
async def sessions_list(d: SessionServices, p: m.SessionsList, caller: Caller, c: Channel
                        ) -> m.SessionList:
    return m.SessionList(sessions=[_session_view(d.sessions, s)
                                   for s in d.sessions.listing(p.agent)])


@implements(m.SessionsGet)
async def sessions_get(d: SessionServices, p: m.SessionsGet, caller: Caller, c: Channel
                       ) -> m.SessionInfo:
    s = _session(d, caller, p.agent, p.session)
    return m.SessionInfo(session=_session_view(d.sessions, s), history=[
        m.SessionTask(task_id=tid, status=status, created=created)
        for tid, status, created in await d.sessions.history(s)])


@implements(m.SessionsEnd)
async def sessions_end(d: SessionServices, p: m.SessionsEnd, caller: Caller, c: Channel
                       ) -> m.SessionView:
    s = d.sessions.end(_session(d, caller, p.agent, p.session).ident)
    await d.sessions.committed()
    return _session_view(d.sessions, s)

