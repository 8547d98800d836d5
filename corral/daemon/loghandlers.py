"""The logs methods' handlers (corral.methods.logs): the last lines of agents (or of one
replica, of a text, of some streams), a follow, a rotation."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.agents import Agents
from ..supervisor.errors import NoSuchAgent
from .api import Commands, by_name
from .caller import Caller, Channel
from .flowcontrol import FOLLOW_BATCH, drain
from .logs import LogHub
from .services import Services


class LogServices(msgspec.Struct, frozen=True):
    hub: LogHub
    agents: Agents  # the agents a log is named by


COMMANDS: Commands[Services, LogServices] = Commands(by_name(LogServices))
implements = COMMANDS.implements


@implements(m.LogsTail)
async def logs_tail(d: LogServices, p: m.LogsTail, caller: Caller, c: Channel) -> m.LogLines:
    sources, keep = _log_sources(d, p)
    if keep is None:
        return m.LogLines(lines=d.hub.tail(sources, p.lines, p.since))
    # one replica's lines, or those a filter keeps: from the sources' whole tails
    lines = [ln for ln in d.hub.tail(sources, d.hub.tail_lines, p.since) if keep(ln)]
    return m.LogLines(lines=lines[-p.lines:] if p.lines > 0 else [])


def _log_sources(d: LogServices, p: m.LogsTail
                 ) -> tuple[list[str], Callable[[m.LogLine], bool] | None]:
    """The sources to read for NAME / NAME#N targets, and a filter when a replica, a
    text (`grep`) or streams are named (None: every line of the sources)."""
    sources, replica_keep = _replica_sources(d, p.names)
    text, streams = p.grep, frozenset(p.streams)
    if text is None and not streams:
        return sources, replica_keep

    def keep(line: m.LogLine) -> bool:
        # the text is looked for in the line as it is printed (who and pid too)
        return ((replica_keep is None or replica_keep(line))
                and (not streams or line.stream in streams)
                and (text is None or text in line.render()))

    return sources, keep


def _replica_sources(d: LogServices, names: list[str]
                     ) -> tuple[list[str], Callable[[m.LogLine], bool] | None]:
    """As `_log_sources`, the filter for replicas alone."""
    replicas: dict[str, set[int] | None] = {}  # (in the order named: the sources)
    for target in names:
        with jsonrpc.invalid_params(ValueError):
            n, index = m.parse_target(target)
        if n not in d.agents and n != "corral" and n not in d.hub.tails:
            raise NoSuchAgent(n, d.agents)
        wanted = replicas.setdefault(n, set())
        if index is None or wanted is None:
            replicas[n] = None
        else:
            wanted.add(index)
    if all(v is None for v in replicas.values()):
        return list(replicas), None

    def keep(line: m.LogLine) -> bool:
        wanted = replicas.get(line.source)
        return wanted is None or line.replica in wanted

    return list(replicas), keep


@implements(m.LogsRotate)
async def logs_rotate(d: LogServices, p: m.LogsRotate, caller: Caller, c: Channel
                      ) -> m.LogsRotated:
    """Each named agent's log file (none named: every one) rotated now."""
    for name in p.names:
        if "#" in name:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"{name}: a log file is an agent's, "
                                                   "not a replica's: name the agent")
        if name not in d.agents and name != "corral":
            raise NoSuchAgent(name, d.agents)
    names = p.names or list(dict.fromkeys(["corral", *d.agents, *d.hub.files]))
    done: list[str] = []
    try:
        for name in names:
            done += [str(f) for f in d.hub.rotate([name])]
    except OSError as exc:
        raise RpcError(jsonrpc.SERVER_ERROR,
                       f"cannot rotate log file {exc.filename}: {exc.strerror} (rotated "
                       f"before it: {', '.join(done) or 'none'})") from None
    return m.LogsRotated(files=done)


@implements(m.LogsFollow)
async def logs_follow(d: LogServices, p: m.LogsFollow, caller: Caller, c: Channel) -> None:
    """Streams until the client goes away (the Peer then cancels this task)."""
    sources, keep = _log_sources(d, p)
    follower = d.hub.follow(sources)

    def send_some() -> None:
        lines: list[m.LogLine] = []
        while follower.queue and len(lines) < FOLLOW_BATCH:
            lines.extend(follower.pop().materialize())
        if keep is not None:
            lines = [ln for ln in lines if keep(ln)]
        if lines:
            c.notify("logs.lines", {"lines": lines})

    try:
        backlog = (await logs_tail(d, p, caller, c)).lines
        if backlog:
            c.notify("logs.lines", {"lines": backlog})
        await drain(c, follower, "logs.missed", send_some)
    finally:
        d.hub.unfollow(follower)
