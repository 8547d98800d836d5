"""The agents methods' handlers (corral.methods.agents): the replicas' lifecycle, an
agent's spec and revisions, the fleet watched. They take the agents' services alone."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from .. import jsonrpc, redact
from .. import methods as m
from ..jsonrpc import RpcError
from ..rollbacks import listed
from ..supervisor.agents import Agents
from ..supervisor.config import ConfigError
from ..supervisor.configload import (
    check_command,
    cluster_problem,
    parse_agents,
    skill_names,
    skill_twin,
)
from ..supervisor.elastic import Elastic
from ..supervisor.lifecycle import RESTARTED, STOPPED_BY_HAND, State
from ..supervisor.quotas import Tenancy
from ..supervisor.startstop import start_each, stop_all
from ..supervisor.tasks import TaskManager
from ..supervisor.tools import Tools
from ..text import plural
from ..views import ReplicaStatus
from .api import Commands, by_name, wire
from .caller import SHARED, Caller, Channel
from .clusterpeer import ClusterPeer
from .fleet import Fleet
from .fleetwatch import FleetWatch
from .revisions import RevisionLog
from .services import Services
from .store import row_limit
from .teams import TeamService

if TYPE_CHECKING:
    from ..supervisor.core import Agent
    from ..supervisor.replica import Replica


class AgentServices(msgspec.Struct, frozen=True):
    agents: Agents  # the agents by name, their replicas
    fleet: Fleet  # fleet changes as units of work
    cluster: ClusterPeer  # the cluster's agents, with [cluster]
    elastic: Elastic  # each elastic agent's state and decisions
    revisions: RevisionLog  # the agents' spec revisions
    quotas: Tenancy  # the tenants' quotas (a status names each agent's)
    task_engine: TaskManager  # the tasks each agent has
    tools: Tools  # the MCP servers beside the agents (a status shows them)
    teams: TeamService  # a team's name is no agent's
    watch: FleetWatch  # the fleet's changes for agents.watch
    notices: Callable[[], list[str]]  # the daemon's own (a drain, an extra not serving)
    config_path: Path  # where a file's agent comes from


def owner_of(d: Services | AgentServices, kind: str, name: str) -> str | None:
    """Whose an agent or an MCP server is: its tenant, SHARED, or None (no such object)."""
    if kind == "agent":  # (a team is called as an agent is: its tenant's)
        return d.quotas.tenant_of(name) or d.teams.tenant_of(name)
    spec = d.tools.spec_of(name)
    if spec is None:
        return None
    return SHARED if spec.shared else spec.tenant


COMMANDS: Commands[Services, AgentServices] = Commands(by_name(AgentServices))
implements = COMMANDS.implements


def _targets(d: AgentServices, names: list[str], all_: bool) -> list[tuple[Agent, int | None]]:
    """(agent, replica index or None) for NAME / NAME#N targets, all checked first."""
    if all_:
        return [(a, None) for a in d.agents.values()]
    if not names:
        raise RpcError(jsonrpc.INVALID_PARAMS, "name at least one agent, or all")
    with jsonrpc.invalid_params(ValueError):
        named = [m.parse_target(target) for target in names]
    return [_target(d, n, i) for n, i in named]


def _target(d: AgentServices, name: str, index: int | None) -> tuple[Agent, int | None]:
    agent = d.agents.agent(name)
    if index is not None and index >= len(agent.replicas):
        raise RpcError(jsonrpc.NOT_FOUND, f"no such replica: {name}#{index} ({name} has "
                                          f"{plural(len(agent.replicas), 'replica')})")
    return agent, index


def _label(agent: Agent, index: int | None) -> str:
    return agent.name if index is None else f"{agent.name}#{index}"


def _replicas(targets: list[tuple[Agent, int | None]]) -> list[Replica]:
    return [r for a, i in targets for r in (a.replicas if i is None else [a.replicas[i]])]


@implements(m.AgentsStatus)
async def agents_status(d: AgentServices, p: m.AgentsStatus, caller: Caller, c: Channel
                        ) -> m.AgentsStatusResult:
    placed = d.cluster.slots
    with jsonrpc.invalid_params(ValueError):  # NAME, or NAME#N: one replica
        named = [m.parse_target(target) for target in p.names]
    # a cluster agent with no slot on this node is named all the same: its slots are elsewhere
    targets = [_target(d, n, i) for n, i in named if n in d.agents or n not in placed]
    agents = list({a.name: a for a, _ in targets}.values()) if p.names \
        else list(d.agents.values())
    shown = {(a.name, i) for a, i in targets}
    slots = {n: [s.split("/", 1)[0] if s else None for s in placed[n]]
             for n in ([n for n, _ in named] or sorted(placed)) if n in placed}
    servers = d.tools.status()
    if p.tenant is not None:
        if not d.quotas.known(p.tenant) or (caller.tenant not in (None, p.tenant)):
            raise jsonrpc.not_found("tenant", p.tenant)
        agents = [a for a in agents if a.spec.tenant == p.tenant]
        slots = {n: v for n, v in slots.items() if owner_of(d, "agent", n) == p.tenant}
        # the operator's view of a tenant is the tenant's view
        servers = [s for s in servers
                   if owner_of(d, "server", s["name"]) in (p.tenant, SHARED)]
    stats = d.task_engine.stats()["agents"]
    here = d.cluster.here
    return m.AgentsStatusResult(
        agents=wire([_status(d, r, draining) for a in agents
                     for draining, rs in ((False, a.replicas), (True, a.draining))
                     for r in rs if not p.names or shown & {(a.name, None), (a.name, r.index)}]),
        mcp_servers=wire(servers),
        tasks=wire({a.name: stats.get(a.name) for a in agents}),
        elastic=_elastic(d, agents),
        cluster_slots=slots,
        cluster_replicas={n: list(v) for n, v in here.items() if n in slots and v},
        notices=d.notices(),
    )


def _status(d: AgentServices, r: Replica, draining: bool) -> ReplicaStatus:
    """A replica's status, with who stopped it by hand, or whether a scale-down drains it."""
    st = r.status()
    mark = d.fleet.stop_mark(r.name, r.index) if r.stopped_by_hand else None
    if mark is not None:
        if r.machine.untouched:  # held down from a daemon's start: not started,
            # because it was stopped, and reads as it did when stopped
            st = msgspec.structs.replace(st, state=State.TERMINATED.value,
                                         reason=STOPPED_BY_HAND)
        return msgspec.structs.replace(st, stopped_by=mark.who, stopped_at=mark.time)
    return msgspec.structs.replace(st, draining=True) if draining else st


def _elastic(d: AgentServices, agents: list[Agent]) -> dict[str, m.ElasticStatus]:
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
async def agents_start(d: AgentServices, p: m.AgentsStart, caller: Caller, c: Channel
                       ) -> m.StartResult:
    targets = _targets(d, p.names, p.all)
    asleep = [(a, i) for a, i in targets if i is None and not a.replicas]
    running = [(a, i) for a, i in targets if (a, i) not in asleep
               and all(r.machine.running for r in _replicas([(a, i)]))]
    # the stops by hand it ends, committed first: a daemon that starts after a crash too
    await d.fleet.starting([(r.name, r.index) for r in _replicas(targets)])
    # paced, as stops are: a thousand starts begun in one turn stall the loop
    await start_each(_replicas(targets))
    return m.StartResult(started=[_label(a, i) for a, i in targets
                                  if (a, i) not in asleep and (a, i) not in running],
                     asleep=[_label(a, i) for a, i in asleep],
                     running=[_label(a, i) for a, i in running])


@implements(m.AgentsStop)
async def agents_stop(d: AgentServices, p: m.AgentsStop, caller: Caller, c: Channel
                      ) -> m.StopResult:
    targets = _targets(d, p.names, p.all)
    replicas = _replicas(targets)
    await d.fleet.stopping([(r.name, r.index) for r in replicas], caller.who, time.time())
    # paced: a thousand stops begun in one turn stalled the loop for a second
    await stop_all(replicas, "stopped")
    return m.StopResult(stopped=[_label(a, i) for a, i in targets])


@implements(m.AgentsRestart)
async def agents_restart(d: AgentServices, p: m.AgentsRestart,
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
    if name.isdecimal():
        return int(name)
    key = name.upper()
    key = key if key.startswith("SIG") else "SIG" + key
    try:
        return int(signal.Signals[key])
    except KeyError:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"unknown signal: {name} (use a name like "
                                               "HUP, TERM, USR1, or a number)") from None


@implements(m.AgentsSignal)
async def agents_signal(d: AgentServices, p: m.AgentsSignal, caller: Caller, c: Channel
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
async def agents_pause(d: AgentServices, p: m.AgentsPause, caller: Caller, c: Channel
                       ) -> m.PauseResult:
    return _paused(p.name, await d.agents.pause(p.name, p.replica, f"paused by {caller.user}"))


@implements(m.AgentsResume)
async def agents_resume(d: AgentServices, p: m.AgentsResume, caller: Caller, c: Channel
                        ) -> m.PauseResult:
    return _paused(p.name, d.agents.resume(p.name, p.replica, f"resumed by {caller.user}"))


@implements(m.AgentsDescribe)
async def agents_describe(d: AgentServices, p: m.AgentsDescribe,
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
        origin="cluster" if node is not None else d.fleet.origin(agent.name, d.config_path),
        revision=(await node.revision_of(agent.name) if node is not None
                  else d.fleet.revision_of(agent.name)),
        argv=spec.argv(),
        spec=fields,
        replicas=[m.ReplicaBrief(replica=r.index, state=r.state.value, pid=r.pid)
                  for r in agent.replicas],
    )


@implements(m.AgentsAdd)
async def agents_add(d: AgentServices, p: m.AgentsAdd, caller: Caller, c: Channel) -> m.AddResult:
    # a task names an agent or a team: an agent of a team's name would take its calls
    teams = sorted(n for n in p.agents if n in d.teams.specs)
    if teams:
        raise RpcError(jsonrpc.CONFLICT, f"agent {teams[0]}: a team has its name (a task "
                                         "names one or the other)")
    # an allowlist's corral__NAME names one thing (decision 1741), a cluster agent too
    twin = skill_twin(p.agents, skill_names(d.fleet.gateway, d.fleet.config_dir))
    if twin is not None:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"{m.AgentsAdd.declared.name}: {twin}")
    if p.for_cluster:
        return m.AddResult(added=await add_cluster_agents(d, p, caller.who))
    return m.AddResult(added=await d.fleet.add(p.agents, caller.who, check=p.check,
                                               tenant=caller.tenant))


async def add_cluster_agents(d: AgentServices, p: m.AgentsAdd, who: str) -> list[str]:
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
    with jsonrpc.invalid_params(ConfigError):
        specs = parse_agents({"agents": p.agents}, m.AgentsAdd.declared.name)
        for name, spec in specs.items():
            why = check_command(spec) if p.check else None
            if why:
                raise ConfigError(f"agents.add: agents.{name}.command: {why} "
                                  "(--no-check to add it anyway)")
            problem = cluster_problem(msgspec.structs.replace(spec, placement="cluster"),
                                      True)
            if problem:
                raise ConfigError(f"agents.add: agents.{name}.{problem}")
    # (one the cluster placed here is the cluster's: Redis answers for it)
    taken = [n for n in specs if n in d.agents and n not in node.placement.placed]
    if taken:
        raise RpcError(jsonrpc.CONFLICT, f"agent {taken[0]} already exists on this node")
    return await node.add_agents(p.agents, who)


@implements(m.AgentsRemove)
async def agents_remove(d: AgentServices, p: m.AgentsRemove, caller: Caller, c: Channel
                        ) -> m.RemoveResult:
    # cluster agents go from Redis (each node stops its replicas at its next beat)
    gone = await d.cluster.remove_agents(p.names)
    rest = [n for n in p.names if n not in gone]
    return m.RemoveResult(removed=[*gone, *(await d.fleet.remove(rest) if rest else [])])


@implements(m.AgentsScale)
async def agents_scale(d: AgentServices, p: m.AgentsScale, caller: Caller, c: Channel
                       ) -> m.ScaleResult:
    node = await d.cluster.node_for(p.name)
    if node is not None:  # the cluster's table in Redis; every node brings its slots to it
        await node.scale_agent(p.name, p.replicas, caller.who)
    else:
        await d.fleet.scale(p.name, p.replicas, caller.who)
    return m.ScaleResult(name=p.name, replicas=p.replicas)


@implements(m.AgentsHistory)
async def agents_history(d: AgentServices, p: m.AgentsHistory,
                         caller: Caller, c: Channel) -> m.HistoryResult:
    node = await d.cluster.node_for(p.name)
    if node is not None:  # the cluster's revisions, the same on every node
        return listed(p.name, [m.Revision(p.name, e.revision, e.time, e.who, e.change, e.spec)
                               for e in await node.agent_history(p.name)], row_limit(p.limit))
    scaling = [m.ScalingDecision(time=s.time, previous=s.previous, replicas=s.replicas,
                                 desired=s.desired, direction=s.direction, reason=s.reason)
               for s in d.elastic.decided(p.name)]
    # an agent of this name another tenant had (removed since) is not its past
    return listed(p.name, d.revisions.history(p.name, d.fleet.tenant_of(p.name)),
                  row_limit(p.limit), scaling[-row_limit(p.limit):])


@implements(m.AgentsUpdate)
async def agents_update(d: AgentServices, p: m.AgentsUpdate, caller: Caller, c: Channel
                        ) -> m.UpdateResult:
    change = await d.fleet.update(p.name, p.set, caller.who, check=p.check,
                                  tenant=caller.tenant)
    return m.UpdateResult(name=p.name, change=change, revision=None if change == "no change"
                          else d.fleet.revision_of(p.name))


@implements(m.AgentsRollback)
async def agents_rollback(d: AgentServices, p: m.AgentsRollback, caller: Caller, c: Channel
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


@implements(m.AgentsWatch)
async def agents_watch(d: AgentServices, p: m.AgentsWatch, caller: Caller, c: Channel) -> None:
    """Streams until the client goes away."""
    with jsonrpc.invalid_params(ValueError):
        for name, index in map(m.parse_target, p.names):
            if index is not None:
                raise ValueError(f"{name}#{index}: a watch is of whole agents: name {name}")
    await d.watch.serve(c, frozenset(p.names), p.interval, p.last_event_id)
