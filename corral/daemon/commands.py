"""The daemon's side of the control methods in corral.methods that no narrower handler
module takes (commandtable.py gathers them all), one function each."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import msgspec

from .. import __version__, jsonrpc, redact
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.config import ConfigError
from ..supervisor.configload import check_command, cluster_problem, parse_agents
from ..supervisor.errors import NoSuchAgent
from ..supervisor.lifecycle import RESTARTED, SERVING, State
from ..supervisor.startstop import start_each, stop_all
from ..text import plural
from .api import Commands, whole, wire
from .caller import SHARED, Caller, Channel
from .history import has_rows
from .services import Services
from .store import row_limit

if TYPE_CHECKING:
    from ..supervisor.core import Agent
    from ..supervisor.replica import Replica

COMMANDS: Commands[Services, Services] = Commands(whole)
implements = COMMANDS.implements


def _targets(d: Services, names: list[str], all_: bool) -> list[tuple[Agent, int | None]]:
    """(agent, replica index or None for every replica) for NAME / NAME#N targets; unknown
    names and replicas are refused before anything is done."""
    if all_:
        return [(a, None) for a in d.agents.values()]
    if not names:
        raise RpcError(jsonrpc.INVALID_PARAMS, "name at least one agent, or all")
    out: list[tuple[Agent, int | None]] = []
    for target in names:
        try:
            name, index = m.parse_target(target)
        except ValueError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
        agent = d.agents.agent(name)
        if index is not None and index >= len(agent.replicas):
            raise RpcError(jsonrpc.NOT_FOUND, f"no such replica: {target} ({name} has "
                                              f"{plural(len(agent.replicas), 'replica')})")
        out.append((agent, index))
    return out


def _label(agent: Agent, index: int | None) -> str:
    return agent.name if index is None else f"{agent.name}#{index}"


def _replicas(targets: list[tuple[Agent, int | None]]) -> list[Replica]:
    return [r for a, i in targets for r in (a.replicas if i is None else [a.replicas[i]])]


@implements(m.DaemonInfo)
async def daemon_info(d: Services, p: m.DaemonInfo, caller: Caller, c: Channel
                      ) -> m.DaemonInfoResult:
    return m.DaemonInfoResult(
        version=__version__,
        pid=os.getpid(),
        uptime=round(time.time() - d.started_at, 3),
        socket=str(d.socket_path),
        config=str(d.config_path),
        status=d.status_line() if not caller.limited else _seen_status(d, caller),
        followers=len(d.hub.followers),
        event_followers=len(d.bus.followers),
        containment=msgspec.to_builtins(d.containment.info()),
        extras=d.extras(),
        draining=d.draining(),
    )


def _seen_status(d: Services, caller: Caller) -> str:
    """The status line of the agents a limited caller sees (the daemon's counts every
    tenant's): walked, as such a caller's fleet is a part of the whole."""
    agents = [a for a in d.agents.values() if caller.sees(a.name)]
    census = Counter(r.state for a in agents for r in a.replicas)
    return f"{fleet_line(len(agents), census)}, {census[State.FAILED]} failed"


def fleet_line(agents: int, census: Counter[State]) -> str:
    """The status line's agents and replicas (Daemon.status_line's, from the supervisor's
    census; a limited caller's, from its agents' replicas)."""
    line = (f"{plural(agents, 'agent')}, {sum(census[s] for s in SERVING)}/"
            f"{plural(census.total(), 'replica')} serving")
    if census[State.PAUSED]:
        line += f", {census[State.PAUSED]} paused"
    return line


@implements(m.DaemonShutdown)
async def daemon_shutdown(d: Services, p: m.DaemonShutdown,
                          caller: Caller, c: Channel) -> m.Stopping:
    # after this answer's turn: a caller that does not wait is answered before the stop
    asyncio.get_running_loop().call_soon(d.request_stop, p.now)
    if not p.wait:
        return m.Stopping(stopping=True)
    return m.Stopping(stopping=True, drained=await d.drained())


@implements(m.DaemonUpgrade)
async def daemon_upgrade(d: Services, p: m.DaemonUpgrade, caller: Caller, c: Channel
                         ) -> m.UpgradeReport:
    if caller.limited and (p.python or p.pythonpath or not p.report):
        raise RpcError(jsonrpc.FORBIDDEN, "an upgrade of the daemon is the operator's")
    return await d.upgrade(p)


@implements(m.ConfigReload)
async def config_reload(d: Services, p: m.ConfigReload, caller: Caller, c: Channel
                        ) -> m.ReloadResult:
    try:
        return await d.reload(caller.who)
    except ConfigError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"reload rejected, nothing changed: {exc}"
                       ) from None


def owner_of(d: Services, kind: str, name: str) -> str | None:
    """Whose an agent or an MCP server is (Caller.owner): its tenant, SHARED for a server
    every tenant may use, None when there is no such object."""
    if kind == "agent":  # (a team is called as an agent is: its tenant's)
        return d.quotas.tenant_of(name) or d.teams.tenant_of(name)
    spec = d.tools.spec_of(name)
    if spec is None:
        return None
    return SHARED if spec.shared else spec.tenant


@implements(m.AgentsStatus)
async def agents_status(d: Services, p: m.AgentsStatus, caller: Caller, c: Channel
                        ) -> m.AgentsStatusResult:
    placed = d.cluster.slots
    # a cluster agent with no slot on this node is named all the same: its slots are
    # elsewhere
    agents = ([d.agents.agent(n) for n in p.names if n in d.agents or n not in placed]
              if p.names else list(d.agents.values()))
    slots = {n: [s.split("/", 1)[0] if s else None for s in placed[n]]
             for n in (p.names or sorted(placed)) if n in placed}
    servers = d.tools.status()
    if p.tenant is not None:
        if not d.quotas.known(p.tenant) or (caller.tenant not in (None, p.tenant)):
            raise jsonrpc.not_found("tenant", p.tenant)
        agents = [a for a in agents if a.spec.tenant == p.tenant]
        slots = {n: v for n, v in slots.items() if owner_of(d, "agent", n) == p.tenant}
        # the servers the tenant's own callers see (Caller.sees_server): the operator's
        # view of a tenant is the tenant's view
        servers = [s for s in servers
                   if owner_of(d, "server", s["name"]) in (p.tenant, SHARED)]
    stats = d.task_engine.stats()["agents"]
    here = d.cluster.here
    return m.AgentsStatusResult(
        agents=wire([r.status() for a in agents for r in a.replicas]),
        mcp_servers=wire(servers),
        tasks=wire({a.name: stats.get(a.name) for a in agents}),
        elastic=_elastic(d, agents),
        cluster_slots=slots,
        cluster_here={n: list(v) for n, v in here.items() if n in slots and v},
        notices=d.notices(),
    )


def _elastic(d: Services, agents: list[Agent]) -> dict[str, m.ElasticStatus]:
    out: dict[str, m.ElasticStatus] = {}
    for a in agents:
        e = d.elastic.status(a.name)
        if e is None:
            continue
        p = e.decider.policy
        last = e.last
        out[a.name] = m.ElasticStatus(
            state=d.elastic.shown_state(a.name) or e.state, replicas=len(a.replicas),
            desired=e.desired,
            min_replicas=p.min_replicas, max_replicas=p.max_replicas,
            last=None if last is None else (f"{last.direction} {last.previous} -> "
                                            f"{last.replicas}: {last.reason}"),
            last_time=None if last is None else last.time)
    return out


@implements(m.AgentsStart)
async def agents_start(d: Services, p: m.AgentsStart, caller: Caller, c: Channel) -> m.StartResult:
    targets = _targets(d, p.names, p.all)
    asleep = [(a, i) for a, i in targets if i is None and not a.replicas]
    running = [(a, i) for a, i in targets if (a, i) not in asleep
               and all(r.machine.running for r in _replicas([(a, i)]))]
    # paced, as stops are: a thousand starts begun in one turn stall the loop
    await start_each(_replicas(targets))
    return m.StartResult(started=[_label(a, i) for a, i in targets
                                  if (a, i) not in asleep and (a, i) not in running],
                     asleep=[_label(a, i) for a, i in asleep],
                     running=[_label(a, i) for a, i in running])


@implements(m.AgentsStop)
async def agents_stop(d: Services, p: m.AgentsStop, caller: Caller, c: Channel) -> m.StopResult:
    targets = _targets(d, p.names, p.all)
    # paced (stop_all): a thousand stops begun in one turn stalled the loop for a second
    await stop_all(_replicas(targets), "stopped")
    return m.StopResult(stopped=[_label(a, i) for a, i in targets])


@implements(m.AgentsRestart)
async def agents_restart(d: Services, p: m.AgentsRestart,
                         caller: Caller, c: Channel) -> m.RestartResult:
    targets = _targets(d, p.names, p.all)
    if p.rolling:
        await asyncio.gather(*(a.roll(replicas=None if i is None else [i])
                               for a, i in targets))
    else:
        reps = _replicas(targets)
        await stop_all(reps, RESTARTED)
        await start_each(reps)
    return m.RestartResult(restarted=[_label(a, i) for a, i in targets])


def _signal_number(name: str) -> int:
    if name.isdigit():
        return int(name)
    key = name.upper()
    key = key if key.startswith("SIG") else "SIG" + key
    try:
        return int(signal.Signals[key])
    except KeyError:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"unknown signal: {name} (use a name like "
                                               "HUP, TERM, USR1, or a number)") from None


@implements(m.AgentsSignal)
async def agents_signal(d: Services, p: m.AgentsSignal, caller: Caller, c: Channel
                        ) -> m.SignalResult:
    sig = _signal_number(p.signal)
    targets = _targets(d, p.names, p.all)
    sent = []
    for r in _replicas(targets):
        if r.process is not None and r.process.alive:
            r.process.signal(sig)
            sent.append(m.SignalTarget(replica=r.label, pid=r.pid))
    if not sent:
        raise RpcError(jsonrpc.REFUSED, "no running process to signal among "
                                        + ", ".join(_label(a, i) for a, i in targets))
    return m.SignalResult(signal=signal.Signals(sig).name if sig in _SIGNALS else str(sig),
                          signalled=sent)


_SIGNALS = {int(s) for s in signal.Signals}


def _paused(name: str, replicas: list[Replica]) -> m.PauseResult:
    return m.PauseResult(agent=name, replicas=[
        m.ReplicaBrief(replica=r.index, state=r.state.value, pid=r.status().pid)
        for r in replicas])


@implements(m.AgentsPause)
async def agents_pause(d: Services, p: m.AgentsPause, caller: Caller, c: Channel
                       ) -> m.PauseResult:
    return _paused(p.name, await d.agents.pause(p.name, p.replica, f"paused by {caller.user}"))


@implements(m.AgentsResume)
async def agents_resume(d: Services, p: m.AgentsResume, caller: Caller, c: Channel
                        ) -> m.PauseResult:
    return _paused(p.name, d.agents.resume(p.name, p.replica, f"resumed by {caller.user}"))


@implements(m.AgentsDescribe)
async def agents_describe(d: Services, p: m.AgentsDescribe,
                          caller: Caller, c: Channel) -> m.DescribeResult:
    agent = d.agents.agent(p.name)
    spec = agent.spec
    # shown by the one rule (redact.py); env as its keys alone, which say what is set
    fields = redact.table(msgspec.structs.asdict(spec))
    fields["env"] = sorted(spec.env)
    fields["limits"] = msgspec.structs.asdict(spec.limits)
    node = d.cluster.joined() if spec.placement == "cluster" else None
    return m.DescribeResult(
        name=agent.name,
        # a cluster agent's replicas here run the cluster's table, of the cluster's
        # revision
        origin="cluster" if node is not None else d.fleet.origin(agent.name, d.config_path),
        revision=(await node.revision_of(agent.name) if node is not None
                  else d.fleet.revision_of(agent.name)),
        argv=spec.argv(),
        spec=fields,
        replicas=[m.ReplicaBrief(replica=r.index, state=r.state.value, pid=r.pid)
                  for r in agent.replicas],
    )


@implements(m.AgentsAdd)
async def agents_add(d: Services, p: m.AgentsAdd, caller: Caller, c: Channel) -> m.AddResult:
    # a task names an agent or a team: an agent of a team's name would take its calls
    teams = sorted(n for n in p.agents if n in d.teams.specs)
    if teams:
        raise RpcError(jsonrpc.CONFLICT, f"agent {teams[0]}: a team has its name (a task "
                                         "names one or the other)")
    if p.for_cluster:
        return m.AddResult(added=await add_cluster_agents(d, p, caller.who))
    return m.AddResult(added=await d.fleet.add(p.agents, caller.who, check=p.check,
                                               tenant=caller.tenant))


async def add_cluster_agents(d: Services, p: m.AgentsAdd, who: str) -> list[str]:
    """Checked here as a local agent would be; kept in Redis, placed by the nodes."""
    node = d.cluster.joined("--cluster needs one")
    local = sorted(n for n, t in p.agents.items()
                   if isinstance(t, dict) and t.get("placement", "cluster") != "cluster")
    if local:
        # one batch is all or none: in Redis, or on this node, not both
        raise RpcError(jsonrpc.INVALID_PARAMS, f"agents.add: agents.{local[0]}.placement: "
                                               f"{p.agents[local[0]]['placement']!r} in a "
                                               "batch of cluster agents: add it apart")
    if not p.agents:
        raise RpcError(jsonrpc.INVALID_PARAMS, "no [agents.NAME] tables to add")
    try:
        specs = parse_agents({"agents": p.agents}, "agents.add")
        for name, spec in specs.items():
            why = check_command(spec) if p.check else None
            if why:
                raise ConfigError(f"agents.add: agents.{name}.command: {why} "
                                  "(--no-check to add it anyway)")
            # what the config file and a change in place refuse (configload.cluster_problem)
            problem = cluster_problem(msgspec.structs.replace(spec, placement="cluster"),
                                      True)
            if problem:
                raise ConfigError(f"agents.add: agents.{name}.{problem}")
    except ConfigError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
    # (one the cluster placed here is the cluster's: Redis answers for it)
    taken = [n for n in specs if n in d.agents and n not in node.placement.placed]
    if taken:
        raise RpcError(jsonrpc.CONFLICT, f"agent {taken[0]} already exists on this node")
    return await node.add_agents(p.agents, who)


@implements(m.AgentsRemove)
async def agents_remove(d: Services, p: m.AgentsRemove, caller: Caller, c: Channel
                        ) -> m.RemoveResult:
    # cluster agents go from Redis (each node stops its replicas at its next beat)
    gone = await d.cluster.remove_agents(p.names)
    rest = [n for n in p.names if n not in gone]
    return m.RemoveResult(removed=[*gone, *(await d.fleet.remove(rest) if rest else [])])


@implements(m.AgentsScale)
async def agents_scale(d: Services, p: m.AgentsScale, caller: Caller, c: Channel
                       ) -> m.ScaleResult:
    node = await d.cluster.node_for(p.name)
    if node is not None:  # the cluster's table in Redis; every node brings its slots to it
        await node.scale_agent(p.name, p.replicas, caller.who)
    else:
        await d.fleet.scale(p.name, p.replicas, caller.who)
    return m.ScaleResult(name=p.name, replicas=p.replicas)


@implements(m.AgentsHistory)
async def agents_history(d: Services, p: m.AgentsHistory,
                         caller: Caller, c: Channel) -> m.HistoryResult:
    node = await d.cluster.node_for(p.name)
    if node is not None:  # the cluster's revisions, the same on every node
        kept = [m.Revision(agent=p.name, revision=e.revision, time=e.time, who=e.who,
                           change=e.change, spec=redact.table(e.spec))
                for e in await node.agent_history(p.name)]
        # the newest `limit`, as the local agents' (kept[-0:] would be every one)
        return m.HistoryResult(name=p.name, current=kept[-1].revision if kept else None,
                               revisions=kept[max(0, len(kept) - row_limit(p.limit)):])
    # the agent's own: an agent of this name another tenant had (removed since) is not
    # its past, for anyone (revisions.py)
    revs = d.revisions.history(p.name, d.fleet.tenant_of(p.name), row_limit(p.limit))
    scaling = [m.ScalingDecision(time=s.time, previous=s.previous, replicas=s.replicas,
                                 desired=s.desired, direction=s.direction, reason=s.reason)
               for s in d.elastic.decided(p.name)]
    # the store keeps the real values (a rollback runs them); the answer, the rule's
    shown = [msgspec.structs.replace(r, spec=redact.table(r.spec)) for r in revs]
    return m.HistoryResult(name=p.name, current=d.fleet.revision_of(p.name),
                           revisions=wire(shown), scaling=scaling[-row_limit(p.limit):])


@implements(m.AgentsUpdate)
async def agents_update(d: Services, p: m.AgentsUpdate, caller: Caller, c: Channel
                        ) -> m.UpdateResult:
    change = await d.fleet.update(p.name, p.set, caller.who, check=p.check,
                                  tenant=caller.tenant)
    return m.UpdateResult(name=p.name, change=change, revision=None if change == "no change"
                          else d.fleet.revision_of(p.name))


@implements(m.AgentsRollback)
async def agents_rollback(d: Services, p: m.AgentsRollback, caller: Caller, c: Channel
                          ) -> m.RollbackResult:
    if p.release is not None and p.revision is not None:
        raise RpcError(jsonrpc.INVALID_PARAMS, "name a revision or a release, not both")
    node = await d.cluster.node_for(p.name)
    if node is not None:
        if caller.tenant is not None:  # (one it sees is placed here: refused by placement)
            d.fleet.held_to(d.agents.agent(p.name).spec, caller.who, caller.tenant)
        if p.release is not None:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"{p.name} is a cluster agent: it has no "
                                                   "releases; name a revision")
        target, now, change = await node.rollback_agent(p.name, p.revision, caller.who)
        return m.RollbackResult(name=p.name, restored=target, revision=now, change=change)
    target, change = await d.fleet.rollback(p.name, p.revision, caller.who, p.release,
                                            tenant=caller.tenant)
    return m.RollbackResult(name=p.name, restored=target,
                            revision=d.fleet.revision_of(p.name), change=change)


@implements(m.AuditList)
async def audit_list(d: Services, p: m.AuditList, caller: Caller, c: Channel) -> m.AuditResult:
    return m.AuditResult(entries=[
        # rows are written by the rule already; read by it too, for rows an earlier
        # corral wrote with the values in them
        m.AuditEntry(time=t, uid=uid, pid=pid, method=method,
                     params=redact.params(method, msgspec.json.decode(params)),
                     outcome=outcome, who=who, tenant=tenant)
        for t, uid, pid, method, params, outcome, who, tenant in d.store.audit_log(
            row_limit(p.limit))])


@implements(m.StatsGet)
async def stats_get(d: Services, p: m.StatsGet, caller: Caller, c: Channel) -> m.StatsResult:
    stats = msgspec.structs.asdict(d.runtime_stats())
    writer = d.store.writer  # the store's writer thread, once the store is open
    per_agent = {}
    for a in d.agents.values():
        per_agent[a.name] = m.AgentStats(
            replicas=len(a.replicas),
            serving=sum(1 for r in a.replicas if r.serving),
            restarts=sum(r.restarts for r in a.replicas),
            # a float even for no replicas, as the field says
            cpu_percent=round(sum((r.sample.cpu_percent for r in a.replicas), 0.0), 1),
            rss_bytes=sum(r.sample.rss_bytes for r in a.replicas),
            usage=wire(d.budgets.stats(a.name)),
            tenant=a.spec.tenant,
            elastic=d.elastic.shown_state(a.name),
        )
    there = sum(a.restarts for a in per_agent.values())
    return m.StatsResult(
        supervisor=m.SupervisorStats(
            **stats, restarts_removed=max(0, stats["restarts"] - there),
            uptime=round(time.time() - d.started_at, 3),
            log_lines=d.hub.lines_written,
            log_lines_dropped=d.hub.lines_dropped,
            log_files_failing=d.hub.failing(),
            state_writes=writer.stats() if writer is not None else None,
            task_journal_refusing=d.tasks.refusing,
            usage_reports_ignored=d.budgets.bad_reports),
        agents=per_agent,
        tasks=wire(d.task_engine.stats()),
        events=d.bus.stats(),
        heartbeat=msgspec.structs.asdict(d.heartbeat),
        gateway=wire(d.gateway_status()),
        cluster=_or_unset(d.cluster.status()),
    )


# -- tokens (issue 21) ---------------------------------------------------------------------


# -- metrics history (issue 21) ------------------------------------------------------------
@implements(m.StatsHistory)
async def stats_history(d: Services, p: m.StatsHistory, caller: Caller, c: Channel
                        ) -> m.MetricsHistoryResult:
    # a tenant's caller: its agent's rows alone, not another tenant's agent's of the name
    result = await d.history.read(p.since, p.agent, p.resolution, tenant=caller.tenant)
    if p.agent is not None and not result.samples and p.agent not in d.agents and (
            not await asyncio.to_thread(has_rows, d.history.path, p.agent)):
        raise NoSuchAgent(p.agent, d.agents, "and no history of one")
    return result


# -- watching the fleet live (issue 21) ------------------------------------------------------
@implements(m.AgentsWatch)
async def agents_watch(d: Services, p: m.AgentsWatch, caller: Caller, c: Channel) -> None:
    """Streams until the client goes away (daemon/fleetwatch.py)."""
    await d.watch.serve(c, frozenset(p.names), p.interval, p.last_event_id)


@implements(m.StatsWatch)
async def stats_watch(d: Services, p: m.StatsWatch, caller: Caller, c: Channel) -> None:
    """stats.get each interval while the client reads: one that does not is sent nothing
    until it does, and then the newest."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        if not c.writable.is_set():
            await c.writable.wait()
        stats = await stats_get(d, m.StatsGet(), caller, c)
        c.notify("stats.sample", m.StatsSample(**msgspec.structs.asdict(stats),
                                               time=time.time()))
        due += p.interval
        if due <= loop.time():  # late: the next one a whole interval on
            due = loop.time() + p.interval
        await asyncio.sleep(due - loop.time())


# -- the dashboard (issue 21) --------------------------------------------------------------


# -- agent packages (issue 25) -------------------------------------------------------------


# -- tenants (issue 23) --------------------------------------------------------------------


def _or_unset(value: Any) -> Any:
    return msgspec.UNSET if value is None else value
