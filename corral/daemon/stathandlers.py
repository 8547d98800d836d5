"""The statistics methods' handlers: the supervisor's and each agent's figures now, as
they come, and their history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from .. import methods as m
from ..supervisor.agents import Agents
from ..supervisor.elastic import Elastic
from ..supervisor.errors import NoSuchAgent
from ..supervisor.events import EventBus
from ..supervisor.stats import HeartbeatWork, Stats
from ..supervisor.tasks import TaskManager
from ..supervisor.tasks.budget import Budgets
from .api import Commands, by_name, wire
from .caller import Caller, Channel
from .clusterpeer import ClusterPeer
from .history import History, has_rows
from .logs import LogHub
from .services import Services
from .store import StateStore
from .tasks import TaskFront


class StatsServices(msgspec.Struct, frozen=True):
    agents: Agents
    budgets: Budgets  # each agent's token and cost use
    elastic: Elastic  # each elastic agent's state
    bus: EventBus
    hub: LogHub  # lines written and dropped, files failing
    store: StateStore  # its writer's figures
    task_engine: TaskManager  # the engine's task counts
    tasks: TaskFront  # whether the journal refuses
    cluster: ClusterPeer  # this node's figures, with [cluster]
    history: History  # the metrics history
    heartbeat: HeartbeatWork
    runtime_stats: Callable[[], Stats]
    gateway_status: Callable[[], dict[str, Any]]
    started_at: float


COMMANDS: Commands[Services, StatsServices] = Commands(by_name(StatsServices))
implements = COMMANDS.implements


@implements(m.StatsGet)
async def stats_get(d: StatsServices, p: m.StatsGet, caller: Caller, c: Channel) -> m.StatsResult:
    stats = msgspec.structs.asdict(d.runtime_stats())
    writer = d.store.writer  # the store's writer thread, once the store is open
    cluster = d.cluster.status()
    per_agent = {a.name: m.AgentStats(
        replicas=len(a.replicas),
        serving=sum(1 for r in a.replicas if r.serving),
        restarts=sum(r.restarts for r in a.replicas),
        # a float even for no replicas, as the field says
        cpu_percent=round(sum((r.sample.cpu_percent for r in a.replicas), 0.0), 1),
        rss_bytes=sum(r.sample.rss_bytes for r in a.replicas),
        usage=wire(d.budgets.stats(a.name)),
        tenant=a.spec.tenant,
        elastic=d.elastic.shown_state(a.name)) for a in d.agents.values()}
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
        cluster=msgspec.UNSET if cluster is None else cluster,
    )


@implements(m.StatsHistory)
async def stats_history(d: StatsServices, p: m.StatsHistory, caller: Caller, c: Channel
                        ) -> m.MetricsHistoryResult:
    # a tenant's caller: its agent's rows alone, not another tenant's agent's of the name
    result = await d.history.read(p.since, p.agent, p.resolution, tenant=caller.tenant)
    if p.agent is not None and not result.samples and p.agent not in d.agents and (
            not await asyncio.to_thread(has_rows, d.history.path, p.agent)):
        raise NoSuchAgent(p.agent, d.agents, "and no history of one")
    return result


@implements(m.StatsWatch)
async def stats_watch(d: StatsServices, p: m.StatsWatch, caller: Caller, c: Channel) -> None:
    """stats.get each interval while the client reads: one that does not is sent nothing
    until it does, and then the newest."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        await c.writable.wait()
        stats = await stats_get(d, m.StatsGet(), caller, c)
        c.notify("stats.sample", m.StatsSample(**msgspec.structs.asdict(stats),
                                               time=time.time()))
        due += p.interval
        if due <= loop.time():  # late: the next one a whole interval on
            due = loop.time() + p.interval
        await asyncio.sleep(due - loop.time())
