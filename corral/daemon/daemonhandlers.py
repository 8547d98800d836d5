"""The daemon's own methods' handlers (corral.methods.daemon): what the daemon is, its
shutdown, its upgrade, a reload of its config, its audit log."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from .. import __version__, jsonrpc, redact
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.agents import Agents
from ..supervisor.config import ConfigError
from ..supervisor.containment import Containment
from ..supervisor.events import EventBus
from ..supervisor.lifecycle import SERVING, State
from ..supervisor.tasks.manager import TaskManager
from ..text import plural
from .api import Commands, by_name
from .caller import Caller, Channel
from .logs import LogHub
from .services import Services
from .store import StateStore, row_limit


class DaemonServices(msgspec.Struct, frozen=True):
    agents: Agents  # what a limited caller's status line counts
    hub: LogHub  # its followers
    bus: EventBus  # its followers
    containment: Containment
    store: StateStore  # the audit log
    started_at: float
    socket_path: Path
    config_path: Path
    status_line: Callable[[], str]
    extras: Callable[[], list[m.ExtraStatus]]  # the HTTP server's, the gateway's
    draining: Callable[[], str | None]  # how far a drain under way is
    request_stop: Callable[[bool], None]  # now: no drain (or cut the one under way)
    drained: Callable[[], Awaitable[m.DrainReport]]  # what the stop's drain did
    upgrade: Callable[[m.DaemonUpgrade], Awaitable[m.UpgradeReport]]
    reload: Callable[[str], Awaitable[m.ReloadResult]]  # who asked -> what changed
    task_engine: TaskManager  # its clock: what a person's waits are measured by


COMMANDS: Commands[Services, DaemonServices] = Commands(by_name(DaemonServices))
implements = COMMANDS.implements


@implements(m.DaemonInfo)
async def daemon_info(d: DaemonServices, p: m.DaemonInfo, caller: Caller, c: Channel
                      ) -> m.DaemonInfoResult:
    return m.DaemonInfoResult(
        version=__version__,
        pid=os.getpid(),
        uptime=round(time.time() - d.started_at, 3),
        socket=str(d.socket_path),
        config=str(d.config_path),
        status=d.status_line() if not caller.limited else _limited_status(d, caller),
        followers=len(d.hub.followers),
        event_followers=len(d.bus.followers),
        containment=msgspec.to_builtins(d.containment.info()),
        extras=d.extras(),
        draining=d.draining(),
        path=os.environ.get("PATH", os.defpath) if not caller.limited else None,
    )


def _limited_status(d: DaemonServices, caller: Caller) -> str:
    """The status line of the agents a limited caller sees (the daemon's counts every
    tenant's): walked, as such a caller's fleet is a part of the whole."""
    agents = [a for a in d.agents.values() if caller.sees(a.name)]
    census = Counter(r.state for a in agents for r in a.replicas)
    return f"{fleet_line(len(agents), census)}, {census[State.FAILED]} failed"


def fleet_line(agents: int, census: Counter[State]) -> str:
    """The status line's agents and replicas."""
    line = (f"{plural(agents, 'agent')}, {sum(census[s] for s in SERVING)}/"
            f"{plural(census.total(), 'replica')} serving")
    if census[State.PAUSED]:
        line += f", {census[State.PAUSED]} paused"
    return line


@implements(m.DaemonShutdown)
async def daemon_shutdown(d: DaemonServices, p: m.DaemonShutdown,
                          caller: Caller, c: Channel) -> m.Stopping:
    # after this answer's turn: a caller that does not wait is answered before the stop
    asyncio.get_running_loop().call_soon(d.request_stop, p.now)
    if not p.wait:
        return m.Stopping(stopping=True)
    return m.Stopping(stopping=True, drained=await d.drained())


@implements(m.DaemonUpgrade)
async def daemon_upgrade(d: DaemonServices, p: m.DaemonUpgrade, caller: Caller, c: Channel
                         ) -> m.UpgradeReport:
    if caller.limited and (p.python or p.pythonpath or not p.report):
        raise RpcError(jsonrpc.FORBIDDEN, "an upgrade of the daemon is the operator's")
    return await d.upgrade(p)


@implements(m.ConfigReload)
async def config_reload(d: DaemonServices, p: m.ConfigReload, caller: Caller, c: Channel
                        ) -> m.ReloadResult:
    try:
        return await d.reload(caller.who)
    except ConfigError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"reload rejected, nothing changed: {exc}"
                       ) from None


@implements(m.AuditList)
async def audit_list(d: DaemonServices, p: m.AuditList, caller: Caller, c: Channel
                     ) -> m.AuditResult:
    return m.AuditResult(entries=[
        # redacted on reading too: an earlier corral wrote rows with the values in them
        m.AuditEntry(time=t, uid=uid, pid=pid, method=method,
                     params=redact.params(method, msgspec.json.decode(params)),
                     outcome=outcome, who=who, tenant=tenant)
        for t, uid, pid, method, params, outcome, who, tenant in
        await d.store.audit_log_now(row_limit(p.limit))])


@implements(m.DaemonClock)
async def daemon_clock(d: DaemonServices, p: m.DaemonClock, caller: Caller, c: Channel
                       ) -> m.ClockTime:
    clock = d.task_engine.clock
    now = clock.advance(p.advance) if p.advance else clock.time()
    return m.ClockTime(time=now, manual=clock.manual, ahead=clock.offset)
