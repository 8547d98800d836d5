"""The sessions methods' handlers. A session is looked up by name, whether its agent runs
or not, and by whose it is (records.session_named)."""

from __future__ import annotations

import msgspec

from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.agents import Agents
from ..supervisor.tasks.sessions import Session, Sessions
from .api import Commands, by_name
from .caller import Caller, Channel
from .clusterpeer import ClusterPeer
from .records import elsewhere, session_named
from .services import Services


def _session_view(sessions: Sessions, s: Session) -> m.SessionView:
    return m.SessionView(
        agent=s.agent, session=s.name, tasks=s.tasks, created=s.created,
        last_used=s.last_used, holder=s.holder,
        state_bytes=s.state_bytes,
        running=s.current.id if s.current is not None else None, waiting=len(s.line),
        expires=sessions.expires(s), tenant=s.tenant)


class SessionServices(msgspec.Struct, frozen=True):
    sessions: Sessions  # the tasks' sessions
    agents: Agents  # which tenant holds an agent's name now
    cluster: ClusterPeer  # the cluster's sessions, on a node


COMMANDS: Commands[Services, SessionServices] = Commands(by_name(SessionServices))
implements = COMMANDS.implements


@implements(m.SessionsList)
async def sessions_list(d: SessionServices, p: m.SessionsList, caller: Caller, c: Channel
                        ) -> m.SessionList:
    here = [_session_view(d.sessions, s) for s in d.sessions.listing(p.agent)]
    mine = {(v.tenant, v.agent, v.session) for v in here}
    # on a node, the cluster's too (a local = true task's session is this node's alone)
    kept = [v for v in await d.cluster.sessions(p.agent)
            if (v.tenant, v.agent, v.session) not in mine]
    return m.SessionList(sessions=here + kept)


@implements(m.SessionsGet)
async def sessions_get(d: SessionServices, p: m.SessionsGet, caller: Caller, c: Channel
                       ) -> m.SessionInfo:
    try:
        s = session_named(d.sessions, d.agents, caller.tenant, p.agent, p.session)
    except RpcError as exc:
        # on a node, the cluster's session of the name when this node has none
        return await elsewhere(exc, lambda: d.cluster.session(caller.tenant, p.agent,
                                                               p.session))
    return m.SessionInfo(session=_session_view(d.sessions, s), history=[
        m.SessionTask(task_id=tid, status=status, created=created)
        for tid, status, created in await d.sessions.history(s)])


@implements(m.SessionsEnd)
async def sessions_end(d: SessionServices, p: m.SessionsEnd, caller: Caller, c: Channel
                       ) -> m.SessionView:
    try:
        named = session_named(d.sessions, d.agents, caller.tenant, p.agent, p.session)
    except RpcError as exc:
        return await elsewhere(exc, lambda: d.cluster.end_session(caller.tenant, p.agent,
                                                                   p.session))
    s = d.sessions.end(named.ident)
    await d.sessions.committed()
    return _session_view(d.sessions, s)
