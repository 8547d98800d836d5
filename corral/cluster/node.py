"""A corral node of a cluster: membership, the desk, the pullers, the outbox and the
reaper around one Redis client, and the loops that drive them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.config import AgentSpec, ClusterSettings
from ..supervisor.durable.store import DurableStore
from ..supervisor.durable.tasks import Durables
from ..supervisor.lifecycle import began_serving
from ..supervisor.parts import Parts
from ..supervisor.replicaparts import Transition
from ..supervisor.tasks import Task, TaskFinished, is_task_id
from ..supervisor.tasks.host import AgentLike, TaskHost
from ..supervisor.tasks.inbox import InboxBounds
from ..supervisor.tasks.sessions import SessionsEnding
from ..supervisor.tasks.steps import tool_calls_made
from ..supervisor.teams.call import driven_with
from ..timeouts import cancel_all, within
from ..views import NodeInfo
from . import records, redischeck
from .backlog import Backlog
from .calltasks import ClusterStepTasks
from .clusterasks import ClusterAsks
from .clustercalls import ClusterCalls
from .clusterlabels import ClusterLabels
from .clusteroutput import ClusterOutputs
from .clusterpush import ClusterPush
from .clustersessions import ClusterSessions
from .clusterspawns import ClusterSpawns
from .clustertasks import ClusterTasks
from .connection import WAITS, connect, place, said, unavailable, why
from .declared import Declarations
from .due import DueClock
from .events import EventRelay
from .home import ClusterHome
from .keys import Keys
from .membership import Membership, NodeFence, NodeView
from .notaskasks import ClusterNoTaskAsks
from .outbox import Outbox
from .placement import Placement
from .puller import ClaimParts, Puller
from .queue import ClusterQueue, ClusterTask, free_slots
from .reaper import Reaper
from .replicas import acks_of
from .retention import ClusterRetention
from .runningcalls import RunningCalls
from .scripts import Scripts, cancel
from .specs import ClusterSpecs, Describe, Entry
from .steps import ClusterSteps
from .submitclaim import SubmitClaims
from .submitkeys import SubmitKeys
from .trust import Trust


class ClusterNode:
    def __init__(self, settings: ClusterSettings, host: TaskHost, parts: Parts,
                 queue: ClusterQueue, report: Callable[[str], None], *,
                 prepare: Callable[[AgentSpec], None],
                 apply: Callable[[str, AgentSpec], Awaitable[None]], describe: Describe,
                 key: bytes | None, calls: DurableStore, asks_bounds: InboxBounds,
                 key_bound: int) -> None:
        """`calls`: this node's journal of the durable calls it drives."""
        self.settings = settings
        self.host = host  # the agents, as the task path sees them
        self.tasks = tasks = parts.tasks
        self.queue = queue
        self.report = report
        self.node = settings.node or socket.gethostname()
        self.redis = connect(settings, self.node)
        self.waits = connect(settings, self.node, WAITS)  # (the pullers' blocking reads)
        self.keys = Keys(settings.name)
        self.scripts = scripts = Scripts(self.redis, acks_of(settings, self.keys.acks))
        self.trust = trust = Trust(key, settings.name, report)
        self.membership = Membership(scripts, self.keys, trust, settings, self.node,
                                     self._offer, report, host.stream,
                                     # (placement is made below, before the beats)
                                     lambda: self.placement.places(), self._queues)
        sessions = ClusterSessions(scripts, self.keys, trust, host, tasks.tenancy,
                                   self.membership, report, settings)
        self.session_stores = (sessions,)  # (daemon/clusterpeer.py: NotANode's, none)
        self.steps = ClusterSteps(scripts, self.keys, trust, tasks.active.get)
        self.running_calls = RunningCalls(self.redis, self.keys, self.membership,
                                          tasks.active.get)
        # (the desk is made below)
        # (a task's labels: read by the view too, an anonymous A2A caller's own tasks)
        self.labels = labels = ClusterLabels(self.redis, self.keys)
        self.push = ClusterPush(self.redis, self.keys, trust)  # (the A2A door's too)
        spawns = ClusterSpawns(scripts, self.keys, trust, self.node,
                               lambda agent, tenant: self.desk.serves(agent, tenant),
                               lambda agent, tenant: self.desk.max_queue(agent, tenant),
                               lambda task_id: self.desk.wait(task_id),
                               lambda task_id: self.desk.info(task_id), labels)
        self.asks = ClusterAsks(scripts, self.keys, trust, settings, tasks.inbox.waits,
                                asks_bounds)
        self.ask_shelves = (self.asks,)  # (daemon/clusterpeer.py: NotANode's, none)
        # the asks of its calls of no task every node's too (docs/approvals.md)
        self.no_task_asks = ClusterNoTaskAsks(self.asks, settings, asks_bounds)
        tasks.replica_calls.asked_in(self.no_task_asks)
        self.outputs = ClusterOutputs(scripts, self.keys, trust, tasks.active.get,
                                      self.waits, settings.beat)
        tasks.outputs.shared_in(self.outputs)
        self.home = ClusterHome(self.steps, sessions, spawns, self.asks,
                                labels, self.push, self.outputs, self._requeue)
        self.outbox = Outbox(scripts, self.keys, trust, self.node, settings.beat, queue,
                             report, settings.keep_tasks_for, self.outputs, sessions.moved)
        self.puller = Puller(scripts, self.keys, self.membership, queue, host, tasks, report,
                             ClaimParts(self.steps, self.home, self.outbox.progress,
                                        self._serving_nodes), self.waits)
        self.submit_claims = SubmitClaims(self.puller)
        self.desk = ClusterTasks(scripts, self.keys, trust, settings, self.membership, host,
                                 report, self.submit_claims, sessions, self.outbox,
                                 SubmitKeys(self.redis, scripts, self.keys, key_bound), labels)
        step_tasks = ClusterStepTasks(self.desk, self.cancel)
        self.calls = ClusterCalls(scripts, self.keys, trust, self.membership, calls,
                                  (int(settings.keep_tasks_for), settings.keep_tasks),
                                  lambda record: all(a in host.agents
                                                     for a in driven_with(record)),
                                  step_tasks.settled, self.outbox.send_held)
        self.durables = Durables(self.calls, step_tasks)
        self.reaper = Reaper(scripts, self.keys, trust, self.membership, report,
                             settings.keep_tasks_for, host.agents)
        self.due = DueClock(self.redis, self.keys, self.membership, report)
        self.retention = ClusterRetention(scripts, self.keys, self.membership, settings)
        self.backlog = Backlog(self.redis, self.keys, parts.elastic, parts.agents)
        self.events = EventRelay(self.redis, self.keys, self.node, parts.bus,
                                 settings.beat, report)
        self.specs = ClusterSpecs(scripts, self.keys, trust, describe)
        self.declared = Declarations(self.specs, self.node, report)
        self.placement = Placement(scripts, self.keys, trust, self.membership, parts,
                                   prepare, apply, self.declared, report)
        host.stream.subscribe(self.desk.finished, TaskFinished)
        host.stream.subscribe(self._sessions_ending, SessionsEnding)
        host.stream.subscribe(self._fenced, NodeFence)
        # a replica that starts serving has free slots: its agent's pull loop reads now,
        # not at its next beat
        self._serving = host.stream.subscribe(self._on_transition, Transition)
        self._loops: list[asyncio.Task[None]] = []
        self.draining = False  # asked to drain (`corral drain`): it takes nothing new
        self.redis_warnings: list[str] = []  # (redischeck.py, as last read)
        self._beats = 0

    def _on_transition(self, e: Transition) -> None:
        if e.kind == "agent" and began_serving(e.previous, e.state):
            self.queue.wake(e.name)

    def _serving_nodes(self, agent: AgentLike) -> int:
        """The live nodes running `agent` as last read (at least this one): how many
        share a burst."""
        return max(1, sum(1 for n in self.desk.view if n.runs(agent.spec.tenant,
                                                              agent.name)))

    def _sessions_ending(self, e: SessionsEnding) -> None:
        e.endings.extend(self.desk.sessions.end_agent(agent, tenant)
                         for agent, tenant in e.owners.items())

    def _requeue(self, task: Task, at: float | None) -> None:
        if isinstance(task, ClusterTask):
            self.outbox.requeue(task, at)

    def _offer(self) -> tuple[int, int, dict[str, str]]:
        agents = self.host.agents
        capacity = sum(free_slots(a) + sum(r.tasks_running for r in a.replicas)
                       for a in agents.values())
        return capacity, len(self.tasks.active), {n: a.spec.tenant
                                                  for n, a in agents.items()}

    def _queues(self) -> tuple[dict[str, int], dict[str, int]]:
        agents = self.host.agents.values()
        specs = self.tasks.tenancy.specs if self.tasks.tenancy is not None else {}
        return ({a.name: a.spec.max_queue for a in agents if a.spec.max_queue},
                {t: specs[t].max_queue for t in {a.spec.tenant for a in agents}
                 if t in specs and specs[t].max_queue})

    def _fenced(self, e: NodeFence) -> None:
        self.outbox.given_up.add(e.consumer)
        for task in self._held(e.consumer):
            self.tasks.cancel(task.id)

    def _held(self, consumer: str | None = None) -> list[ClusterTask]:
        """The cluster tasks not yet ended here (claimed by `consumer`, if given)."""
        return [t for t in self.tasks.active.values()
                if isinstance(t, ClusterTask) and not t.ended
                and consumer in (None, t.consumer)]

    def _running(self) -> list[Task]:
        """What runs here, and what ended here with its outcome not yet written."""
        return [*self.tasks.active.values(), *(t for t, _ in self.outbox.pending)]

    # -- the loops --------------------------------------------------------------------
    def place_after(self, event: asyncio.Event) -> None:
        """The cluster's agents placed here from when `event` is set on (an upgrade's new
        image, once its handed processes settled: a cluster agent's worker is never
        adopted by a replica placed meanwhile)."""
        self.placement.after = event

    def start(self) -> None:
        self.report(f"cluster {self.settings.name}: node {self.node} on Redis "
                    f"{place(self.settings)}")
        for name, loop in (("membership", self.membership.run), ("beat", self._beat),
                           ("outbox", self.outbox.run), ("outcomes", self.desk.tail),
                           ("due", self.due.run),
                           ("placement", self.placement.run),
                           ("events out", self.events.run_out),
                           ("events in", self.events.run_in)):
            self._loops.append(asyncio.ensure_future(self._keep(name, loop)))

    async def _keep(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """A loop that fails is reported and started again a beat later."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: said, and the loop goes on
                self.report(f"cluster: the {name} loop failed: {type(exc).__name__}: "
                            f"{exc}")
                await asyncio.sleep(self.settings.beat)

    async def _beat(self) -> None:
        while True:
            self.puller.sync()
            if self.membership.member:
                try:
                    held = self._running()
                    await self.reaper.refresh(self._running, self.puller.streams(),
                                              self.queue.claiming)
                    await self.puller.let_go()
                    await self._cancels()
                    await self.asks.sweep()  # a suspended task's asks' deadlines
                    await self.desk.refresh_view()
                    await self.backlog.step(self.desk.view)
                    streams = await self.reaper.streams()
                    await self.reaper.reap(streams)
                    await self.desk.sessions.sweep()  # (after the turns ended by it)
                    for handover in await self.calls.orphans():  # (their kinds drive them)
                        self.host.stream.emit(handover)
                    await self.retention.step(streams)
                    await self._drain_step()
                    await self.running_calls.beat(held)  # (last: it holds up no reaping)
                    short = self.scripts.acks is not None and self.scripts.acks.fell_short()
                    if short or self._beats % redischeck.CHECK_BEATS == 0:
                        await self._check_redis()
                    self._beats += 1
                except RedisError as exc:
                    self.report(f"cluster: the beat's reaping: {why(exc)}")
            await asyncio.sleep(self.settings.beat)

    async def _check_redis(self) -> None:
        """Said in the log when what Redis risks changes (at the first beat: at all)."""
        now = await redischeck.warnings(self.redis, self.settings.replicas_acked)
        if now != self.redis_warnings:
            for line in now:
                self.report(f"cluster: warning: {line}")
            if self.redis_warnings and not now:
                self.report("cluster: Redis's configuration is now as docs/cluster.md asks")
            self.redis_warnings = now

    async def _drain_step(self) -> None:
        """Asked to drain: read no more tasks, let the cluster place this node's cluster
        agents elsewhere, finish what was taken, then leave the cluster for good (until
        the daemon starts again); local work goes on."""
        if not self.draining:
            # asked of this incarnation: a node restarted since is not drained again; the
            # order is matched as written, not parsed (a Redis writer's text of no number
            # is no order, and failed the beat at int())
            asked = await self.redis.hget(self.keys.draining, self.node)
            if asked != b"%d" % self.membership.incarnation:
                return
            self.draining = self.puller.paused = self.placement.draining = True
            self.report(f"cluster: node {self.node} drains: it takes no new tasks, "
                        "finishes those it has, and hands its cluster agents over")
            return
        taken = [t for t in self.tasks.active.values() if isinstance(t, ClusterTask)]
        if taken or self.outbox.pending or self.placement.placed:
            return
        await self.membership.leave(for_good=True)
        await self.redis.hdel(self.keys.draining, self.node)
        self.report(f"cluster: node {self.node} drained: it left cluster "
                    f"{self.settings.name}")

    async def drain(self, node: str) -> NodeInfo:
        views = {v.node: v for v in await self.nodes()}
        view = views.get(node)
        if view is None:
            raise RpcError(jsonrpc.NOT_FOUND, f"no node {node} in cluster "
                                              f"{self.settings.name} (see `corral nodes`)")
        if not view.alive:
            raise RpcError(jsonrpc.CONFLICT, f"node {node} is not alive: there is nothing "
                                             "to drain")
        with said(self.settings, f"node {node} was not asked to drain"):
            await self.redis.hset(self.keys.draining, node, view.incarnation)
        return view

    async def stop_taking(self) -> None:
        """The daemon drains before it stops: this node reads no more tasks, and those
        waiting here go back to the cluster at once; those running finish here, or are
        handed back by `hand_back`."""
        self.puller.paused = self.placement.draining = True
        await self.stop_queued(f"node {self.node} is stopping")

    async def stop_queued(self, reason: str) -> None:
        """The cluster tasks waiting here go back to the cluster (an upgrade's too)."""
        waiting = [t for t in self._held() if t.queued]
        for t in waiting:
            self.tasks.queue.remove(t)
            self.tasks.active.pop(t.id, None)
        if waiting and self.membership.member:
            await self.reaper.hand_back(waiting, reason, lost=False)

    async def flush_outbox(self) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await within(self.outbox.flush(), self.settings.node_ttl)

    async def give_back_unknown(self, running: set[str], reason: str,
                                stopping: str | None = None) -> None:
        """What this incarnation (`stopping`: that one, as it stops) holds in the streams
        it read but does not run (a pull loop ended in its claim's round trip) waits again."""
        try:
            await within(self.reaper.give_back(self.puller.streams(),
                                               stopping or self.membership.consumer, reason,
                                               frozenset(e.encode() for e in running)),
                         self.settings.node_ttl)
        except (RedisError, OSError, TimeoutError) as exc:
            then = "over once this node's key expires" if stopping else "back as an orphan"
            self.report(f"cluster: what this node read but did not run was not given back "
                        f"({why(exc)}): the cluster takes it {then}")

    async def hand_back(self) -> None:
        """A node about to stop (before its agents do): it reads nothing more, sends the
        outcomes it has, and hands back what it still holds (no TTL to wait out): what
        waits here as an orphan's, what runs as a loss (Reaper.hand_back)."""
        await self.puller.close()
        if not self.membership.member:
            return
        consumer = self.membership.consumer
        # a task asked to cancel ends so (its outcome goes with the flush), rather than
        # being handed back to run again
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await within(self._cancels(), self.settings.node_ttl)
        # what is not sent is taken over once this incarnation's key is gone
        await self.flush_outbox()
        self.outbox.given_up.add(consumer)
        reason = f"node {self.node} stopped"
        await self.stop_queued(reason)
        held = self._held(consumer)
        if held:
            await self.reaper.hand_back(held, reason, lost=True)
        # a claim whose answer the closed pull loop never read (cancelled in its round
        # trip) is this incarnation's in Redis and unknown here: it waits again, no retry
        # spent, rather than being taken over as a dead node's once the key is gone
        await self.give_back_unknown(set(), reason, consumer)

    def background(self, work: Awaitable[None]) -> None:
        """A one-off of the node's, ended with its loops (handover.py's give-back)."""
        self._loops.append(asyncio.ensure_future(work))

    async def close(self) -> None:
        self.host.stream.unsubscribe(self._serving)
        await self.puller.close()
        loops, self._loops = self._loops, []
        await cancel_all(loops)
        await self.placement.close()
        await self.asks.close()
        await self.no_task_asks.close()
        # (their last writes, a beat at most)
        for part in (self.outputs, self.steps, self.calls):
            with contextlib.suppress(TimeoutError):
                await within(part.close(), self.settings.beat)
        # leaving is a courtesy (the node's key lapses at its TTL anyway): a Redis gone
        # away meanwhile may answer with uvloop's RuntimeError of a closed transport
        with contextlib.suppress(RedisError, OSError, TimeoutError, RuntimeError):
            await within(self.membership.leave(), self.settings.beat)
        for client in (self.waits, self.redis):
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await within(client.aclose(), self.settings.beat)

    # -- for the command layer ----------------------------------------------------------
    async def add_agents(self, tables: dict[str, dict[str, Any]], who: str) -> list[str]:
        with said(self.settings, "nothing was added"):
            return await self.specs.add(
                {n: {**t, "placement": "cluster"} for n, t in tables.items()}, who)

    # -- what the command layer asks of the cluster (daemon/clusterpeer.py) ------------
    @property
    def slots(self) -> dict[str, list[str | None]]:
        return self.placement.slots

    @property
    def here(self) -> dict[str, list[int]]:
        return self.placement.placed

    def views(self) -> list[NodeView]:
        return list(self.desk.view)

    def joined(self, why: str = "") -> ClusterNode:
        return self

    async def node_for(self, name: str) -> ClusterNode | None:
        return self if await self.runs_cluster_agent(name) else None

    async def remove_agents(self, names: list[str]) -> list[str]:
        """Those of `names` that are cluster agents, removed, their sessions ended."""
        with said(self.settings, "nothing was removed"):
            owners = await self.desk.sessions.owners(names)
            gone = await self.specs.remove(names)
        await self.desk.sessions.end_cluster_agents({n: owners[n] for n in gone})
        return gone

    async def runs_cluster_agent(self, name: str) -> bool:
        """Whether a command on agent `name` here is the cluster's agent's: the cluster
        has one of that name and this node has none of its own."""
        if name in self.host.agents and name not in self.placement.placed:
            return False
        try:
            return name in await self.specs.names()
        except RedisError as exc:
            what = (f"{name} is the cluster's agent" if name in self.host.agents else
                    f"no agent {name} on this node, and the cluster's cannot be read")
            raise unavailable(self.settings, exc, f"{what}: nothing changed"
                              ) from None

    async def refuse_deploy(self, name: str) -> None:
        """`corral deploy` is refused for a cluster agent: it builds a release on this
        node alone."""
        try:
            cluster = await self.runs_cluster_agent(name)
        except RpcError:
            cluster = False  # Redis away: local work goes on (the name is not placed here)
        if cluster:
            raise RpcError(jsonrpc.CONFLICT, f"agent {name} is a cluster agent: a deploy "
                           "builds its release on this node alone, and the nodes its "
                           "replicas are placed on would have none; deploy the package "
                           "under another name (--name) as this node's agent, or change "
                           "the cluster agent's command (a reload, or remove and add it)")

    async def scale_agent(self, name: str, replicas: int, who: str) -> None:
        # (a count below 0 is refused where agents.scale is decoded: AgentsScale's bound)
        with said(self.settings, f"{name} was not scaled"):
            await self.specs.change(name, lambda t: {**t, "replicas": replicas}, who)

    async def rollback_agent(self, name: str, revision: int | None, who: str
                             ) -> tuple[int, int, str]:
        with said(self.settings, f"{name} was not rolled back"):
            return await self.specs.rollback(name, revision, who)

    async def revision_of(self, name: str) -> int | None:
        """None: not known, or Redis away."""
        try:
            return await self.specs.revision(name)
        except RedisError:
            return None

    async def agent_history(self, name: str) -> list[Entry]:
        with said(self.settings, f"{name}'s history cannot be read"):
            return await self.specs.history(name)

    async def declare(self, tables: dict[str, dict[str, Any]], wait: float) -> dict[str, str]:
        """The config file's cluster agents, registered now when Redis answers within
        `wait`, else by the placement loop; the agents whose change was refused (-> why)."""
        self.declared.declare(tables)
        try:
            return await within(self.declared.sync(), wait)
        except (RedisError, OSError, TimeoutError) as exc:
            self.report(f"cluster: the config's cluster agents not yet registered "
                        f"({why(exc) if isinstance(exc, RedisError) else 'no answer'}): "
                        "at the next beat")
            return {}

    async def nodes(self) -> list[NodeInfo]:
        with said(self.settings, "the nodes cannot be listed"):
            return [n.info() for n in await self.membership.nodes()]

    async def task(self, task_id: str, *, wait: bool = False) -> m.TaskInfo | None:
        """A cluster task's record (after its end, with `wait`); None: not the cluster's."""
        try:
            info = await self.desk.info(task_id)
            if info is not None and wait and info.status.encode() not in records.TERMINAL:
                info = await self.desk.wait(task_id)
            if info is not None and info.status.encode() not in records.TERMINAL:
                # what it waits for, wherever it runs (clusterasks.py)
                info.asks = await self.asks.of_task(task_id) or info.asks
                # the calls its running attempt made so far, as its steps say them and
                # its node last wrote them (its record counts those of its ended
                # attempts: decisions 2035, 2095)
                info.tool_calls = max(info.tool_calls, tool_calls_made(
                    await self.steps.history(task_id)), await self.running_calls.of(task_id))
        except RedisError as exc:
            if self.tasks.holds(task_id) or task_id in self.tasks.finished:
                return None  # this node's engine still knows it
            raise unavailable(self.settings, exc, f"task {task_id} cannot be read"
                              ) from None
        return info

    async def cancel(self, task_id: str) -> m.TaskInfo | None:
        """Cancel a cluster task from any node: at once when queued or running here,
        else the node running it does at its next beat."""
        mine = self.tasks.active.get(task_id)
        # (one being suspended is its cluster's already: cancelled there)
        if isinstance(mine, ClusterTask) and not mine.ended and not mine.suspended:
            self.tasks.cancel(task_id)  # its outcome goes through the fence
            await self.flush_outbox()
        elif is_task_id(task_id):
            try:
                got = await cancel(self.desk, task_id, int(self.settings.keep_tasks_for))
            except RedisError as exc:
                raise unavailable(self.settings, exc,
                                  f"task {task_id} was not cancelled") from None
            if got is None:
                return None
            if got == b"cancelled":  # (a turn of a session: it leaves the line first)
                await self.desk.sessions.moved([task_id])
            if got == b"asked":  # the node running it cancels it within a beat
                with contextlib.suppress(TimeoutError):
                    return await within(self.desk.wait(task_id), 2 * self.settings.node_ttl)
        return await self.task(task_id)

    async def _cancels(self) -> None:
        """The running cluster tasks here that a node was asked to cancel."""
        mine = self._held()
        if not mine:
            return
        pipe = self.redis.pipeline(transaction=False)
        for t in mine:
            pipe.hget(self.keys.task(t.id), "cancel")
        for t, asked in zip(mine, await pipe.execute(), strict=True):
            if asked and not t.ended:
                self.tasks.cancel(t.id)

    def status(self) -> dict[str, Any]:
        m = self.membership
        return {"node": self.node, "cluster": self.settings.name, "state": m.state,
                "draining": self.draining,
                "incarnation": m.incarnation, "redis": place(self.settings),
                "redis_error": m.error, "fences": m.fences,
                "claimed": self.puller.claimed,
                "claimed_at_submit": self.submit_claims.claimed, "reads": self.puller.reads,
                "read": self.puller.read, "published": self.outbox.published,
                "outbox": len(self.outbox.pending), "late_writes_refused": self.outbox.refused,
                "requeued": self.reaper.requeued, "lost": self.reaper.lost,
                "orphans": self.reaper.orphans, "retention": self.retention.status(),
                "agents": self.placement.status(), "trust": self.trust.status(),
                "redis_warnings": self.redis_warnings,
                "events": self.events.status(), "woken": self.backlog.woken,
                # durable calls (workflow runs) taken over from dead nodes, and this
                # node's writes into one refused since another took it
                "calls": {"taken": self.calls.taken, "late_writes_refused": self.calls.fenced},
                "asks": self.asks.status()}
