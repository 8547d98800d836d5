"""The sessions methods' handlers: one source, the sessions kept here and in the cluster
(SessionBook), a session looked up by name whether its agent runs or not, and by whose it is."""

from __future__ import annotations

import msgspec

from .. import methods as m
from ..supervisor.tasks.sessions import SessionBook, Sessions
from .api import Commands, by_name
from .caller import Caller, Channel
from .clusterpeer import ClusterPeer
from .services import Services


class SessionServices(msgspec.Struct, frozen=True):
    sessions: Sessions  # the tasks' sessions
    cluster: ClusterPeer  # the cluster's sessions, on a node


COMMANDS: Commands[Services, SessionServices] = Commands(by_name(SessionServices))
implements = COMMANDS.implements


@implements(m.SessionsList)
async def sessions_list(d: SessionServices, p: m.SessionsList, caller: Caller, c: Channel
                        ) -> m.SessionList:
    book = SessionBook(d.sessions, d.cluster.session_stores)
    return m.SessionList(sessions=await book.listing(p.agent))


@implements(m.SessionsGet)
async def sessions_get(d: SessionServices, p: m.SessionsGet, caller: Caller, c: Channel
                       ) -> m.SessionInfo:
    return await SessionBook(d.sessions, d.cluster.session_stores).info(
        caller.tenant, p.agent, p.session, caller.sees_record)


@implements(m.SessionsEnd)
async def sessions_end(d: SessionServices, p: m.SessionsEnd, caller: Caller, c: Channel
                       ) -> m.SessionView:
    return await SessionBook(d.sessions, d.cluster.session_stores).end(
        caller.tenant, p.agent, p.session, caller.sees_record)
