"""The Supervisor: agents and their replicas, the heartbeat loop, and the Python API.

One asyncio event loop owns everything; nothing here blocks it. Exits arrive from the
kernel (pidfd), deadlines are loop timers, and the heartbeat loop only pings and samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Container, Iterable
from pathlib import Path
from typing import Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import DEFAULT_MAX_LINE, LineBlock, RpcError
from ..mcp.pool import McpPool
from ..text import closest, listing, plural
from ..timeouts import cancel_all, within
from ..workerproto import StateCheckpointParams
from .config import AgentSpec, ConfigError, McpServerSpec, TenantSpec
from .configload import elastic_problem, protocol_problem
from .containment import CgroupMode, Containment
from .elastic import Elastic, scale_refusal
from .events import EventBus
from .health import CHECK_KIND, HealthBoard
from .lifecycle import LIVE, RESTARTED, SERVING, STOPPED, TRANSIENT, Cause, State
from .listening import ListeningClock
from .mcproutes import AgentMcp
from .mcpserver import McpServerReplica
from .names import name_problem, shown
from .notifysock import NotifyDir
from .pacing import BATCH, pacer
from .pausing import selected, to_pause, to_resume
from .plain import make_replica
from .process_replica import Event, Exited, LogLines, ProcessReplica, ReplicaStatus, ResumeFailed
from .remote import RemoteMcpServer
from .replica import Replica
from .stats import HeartbeatWork, Stats
from .stream import TICK, Checkpoint, ListChanged, Roster, Stall, Stream, Subscription
from .tasks import FINISHED_KEPT, FINISHED_KEPT_BYTES, Queue, TaskJournal, TaskManager
from .tenantcgroups import TenantNodes
from .tenants import QuotasChanged, Tenancy, visible_allow
from .workercalls import on_notification
from .zygote import Zygotes

__all__ = ["Agent", "HeartbeatWork", "NoSuchAgent", "Stats", "Supervisor", "SupervisorError"]

log = logging.getLogger("corral.supervisor")


class SupervisorError(RpcError):
    """An operation on the supervisor failed; `code` is a jsonrpc error code."""


class NoSuchAgent(SupervisorError):
    """`no such agent: NAME`, and what there is instead: the closest name, else the
    agents there are (`known`; None: not known here, nothing said). Every refusal of an
    unknown agent is one, so that a caller limited to some agents is told of those alone
    (daemon.api words it again for such a caller)."""

    def __init__(self, name: str, known: Iterable[str] | None, note: str | None = None
                 ) -> None:
        self.name = name
        self.note = note  # said first in the parentheses: "and no history of one"
        said = [note] if note else []
        if known is not None:
            names = sorted(known)
            near = closest(name, names)
            said.append(f"did you mean `{near}`?" if near is not None
                        else f"agents: {listing(names)}" if names else "there are no agents")
        super().__init__(jsonrpc.NOT_FOUND, f"no such agent: {jsonrpc.visible(name)}"
                                            + (f" ({'; '.join(said)})" if said else ""))


# the heartbeat's visits per turn of the loop, and its sampling budget per second
HEARTBEAT_SLICE = 64
SAMPLES_PER_SECOND = 250
FDS_EVERY = 5


class Agent:
    """An agent: a spec and its replicas."""

    def __init__(self, sup: Supervisor, spec: AgentSpec) -> None:
        self.sup = sup
        self.spec = spec
        self.name = spec.name
        self.replicas: list[Replica] = [
            self._new_replica(i) for i in range(spec.replicas)
        ]
        # processes of a rollout not (or no longer) in `replicas`: the one starting and the
        # one finishing its tasks; the supervisor stops them too when it closes
        self.replacing: set[Replica] = set()
        self._starter: Starter | None = None  # start_all's starts still due

    def _new_replica(self, index: int) -> Replica:
        return make_replica(self.sup, self.spec, self.name, index)

    def start(self) -> None:
        self._starter = start_all(self.replicas)

    async def stop(self, reason: str = "stopped") -> None:
        if self._starter is not None:
            self._starter.cancel()
        await stop_all(self.replicas, reason)

    async def roll(self, spec: AgentSpec | None = None, *, replicas: list[int] | None = None,
                   start_stopped: bool = True) -> None:
        """Replace replicas one at a time (all, or those listed) with processes of `spec`
        (default: the current one): each new process is serving before the old one is
        taken out of dispatch, and the old one finishes its running tasks before it stops,
        so the agent never serves with fewer replicas and no task is dropped. A new process
        that does not become ready aborts the rollout, the old one kept.
        A replica stopped by hand (or never started) is replaced without starting, unless
        `start_stopped`."""
        new_spec = spec or self.spec
        for i in replicas if replicas is not None else range(len(self.replicas)):
            if i < len(self.replicas):
                await self._replace(i, new_spec, start_stopped)
        if spec is not None:
            spec.replicas = self.spec.replicas
            self.spec = spec

    async def _replace(self, i: int, spec: AgentSpec, start_stopped: bool) -> None:
        old = self.replicas[i]
        new = make_replica(self.sup, spec, self.name, i)
        if not start_stopped and old.stopped_by_hand:
            self.replicas[i] = new
            self.sup.stream.emit(Roster(self.name))
            self.sup._forget([old])
            return
        self.replacing.update((old, new))
        try:
            await self._swap(i, old, new, spec)
        finally:
            self.replacing -= {old, new}

    async def _swap(self, i: int, old: Replica, new: Replica, spec: AgentSpec) -> None:
        new.start(by_hand=True)
        why = await self.sup.healthy([new], spec, spec.start_timeout + spec.stop_timeout
                                     + 5.0 + spec.min_healthy_time)
        if why is not None:
            await new.stop("rollout aborted")
            self.sup._forget([new])
            raise SupervisorError(jsonrpc.REFUSED, f"rollout of {self.name} stopped at "
                                  f"replica {i}: the new process did not become ready: "
                                  f"{why}; the old one keeps running")
        self.replicas[i] = new  # from here on, new tasks go to the new process
        self.sup.stream.emit(Roster(self.name))
        self.sup.tasks.pump(self.name)
        await self._retire([old], spec, "replaced by a new process")

    async def _retire(self, old: list[Replica], spec: AgentSpec, reason: str) -> None:
        """Processes out of dispatch finish their running tasks (each within its task's
        deadline and grace), then stop."""
        for r in old:
            if r.moves(Cause.RESUME):  # paused: it finishes its tasks only if it runs
                try:
                    r.resume(f"{reason}: resumed to finish its tasks and stop")
                except ResumeFailed as exc:  # stopped frozen: SIGKILL reaches it
                    r.note(f"{exc.message}: its tasks are not finished")
        busy = [r for r in old if r.tasks_running]
        for r in busy:
            r.note(f"replaced: finishing {r.tasks_running} running task(s) first")
        if busy:
            with contextlib.suppress(TimeoutError):
                await self.sup.wait_for(lambda: not any(r.tasks_running for r in busy),
                                        spec.task_timeout + spec.cancel_grace)
        await stop_all(old, reason)
        self.sup._forget(old)

    async def switch(self, spec: AgentSpec) -> None:
        """Replace every replica at once with processes of `spec` (a release of a
        package): they start beside the running ones, and only once all are Ready and
        have stayed so for `spec.min_healthy_time` (within `spec.healthy_deadline`) do
        they take the agent's tasks, together, while the old ones finish theirs and
        stop. Until then the old ones serve as before; a new process that exits or is
        late stops the switch (SupervisorError with its reason) and the new ones are
        stopped. Replicas stopped by hand (or never started) are replaced without
        starting; Failed ones are started (a new release is how one is fixed)."""
        old = list(self.replicas)
        new = [make_replica(self.sup, spec, self.name, i) for i in range(len(old))]
        started = [n for n, o in zip(new, old, strict=True)
                   if o.state == State.FAILED or not o.stopped_by_hand]
        self.replacing.update((*old, *new))
        try:
            for r in started:
                r.start(by_hand=True)
            why = await self.sup.healthy(started, spec, spec.healthy_deadline)
            if why is not None:
                await stop_all(new, "rollout aborted")
                self.sup._forget(new)
                raise SupervisorError(jsonrpc.REFUSED, f"a new process of {self.name} did "
                                      f"not become ready: {why}; the running processes "
                                      "keep serving")
            spec.replicas = len(new)
            self.spec = spec
            self.replicas = new  # from here on, new tasks go to the new processes
            self.sup.stream.emit(Roster(self.name))
            self.sup.tasks.pump(self.name)
            await self._retire(old, spec, "replaced by a new release")
        finally:
            self.replacing -= {*old, *new}

    async def scale(self, n: int, *, idle_only: bool = False, reason: str = "scaled down",
                    before_stop: Callable[[list[Replica]], Awaitable[None]] | None = None
                    ) -> int:
        """To `n` replicas; returns the count reached. `idle_only` (the autoscaler):
        only replicas with no running task are taken, from the end, so fewer may go
        than asked. `before_stop`: awaited with the replicas going, once they are out of
        dispatch and before they are asked to stop (hibernate's checkpoint)."""
        if n < 0:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, "replicas must be >= 0")
        self.sup.check_fleet({self.name: n}, f"{plural(n, 'replica')} of {self.name}")
        self.sup.check_tenants({self.name: (self.spec.tenant, n)},
                               f"scaling {self.name} to {n}")
        current = len(self.replicas)
        if n > current:
            new = [self._new_replica(i) for i in range(current, n)]
            self.replicas.extend(new)
            self.sup.stream.emit(Roster(self.name))
            self._starter = start_all(new)
        elif n < current:
            if idle_only:
                keep = current
                while keep > n and not self.replicas[keep - 1].tasks_running:
                    keep -= 1
                n = keep
            gone = self.replicas[n:]
            del self.replicas[n:]
            if gone:
                self.sup.stream.emit(Roster(self.name))
                if before_stop is not None:
                    await before_stop(gone)
                await stop_all(gone, reason)
                self.sup._forget(gone)
        self.spec.replicas = n
        return n


class Supervisor:
    """Runs agents as capped processes and keeps them alive.

    Use as `async with Supervisor() as sup:`; `close()` stops every agent gracefully.
    """

    def __init__(
        self,
        *,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 5.0,
        max_line: int = DEFAULT_MAX_LINE,
        cgroups: CgroupMode = "auto",
        max_replicas: int | None = None,
        state_dir: Path | None = None,
        journal: TaskJournal | None = None,
        tasks_kept: int = FINISHED_KEPT,
        tasks_kept_bytes: int = FINISHED_KEPT_BYTES,
        task_queue: Queue | None = None,
        spared: Container[int] = frozenset(),
    ) -> None:
        """`journal` makes tasks durable (the daemon passes its SQLite journal); at most
        `tasks_kept` finished tasks, and `tasks_kept_bytes` of their outputs, stay in
        memory; `task_queue` holds waiting tasks (default: the local heap; a cluster
        node's: corral.cluster.queue); `spared`: the embedding program's own children
        (containment.Containment)."""
        self.heartbeat_interval = heartbeat_interval
        self.max_replicas = max_replicas or default_max_replicas()
        self.state_dir = state_dir  # where remote servers' OAuth tokens are kept
        # every event (transitions, log lines, exits, ticks, ...) goes out on this stream;
        # its subscribers cannot break it (stream.py)
        self.stream = Stream()
        # subreaper, cgroups and process records: nothing a process starts outlives it
        self.containment = Containment(cgroups, stream=self.stream, spared=spared)
        self.heartbeat_timeout = heartbeat_timeout
        self.max_line = max_line
        self.agents: dict[str, Agent] = {}
        self.stats = Stats()
        self.heartbeat_work = HeartbeatWork()
        self.zygotes = Zygotes(self.containment)
        self.spawn_slots = asyncio.Semaphore(SPAWN_CONCURRENCY)
        # agent replicas by state, kept as transitions happen: status lines and readiness
        # checks read it in O(1) instead of scanning every replica per event
        self.census: Counter[State] = Counter()
        self.closing = False
        self.started_at = time.monotonic()
        self._heartbeat: asyncio.Task[None] | None = None
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        # wait_for's conditions: looked at after every transition and readiness change
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._event_queues: dict[asyncio.Queue[Event], Subscription] = {}
        # the loop's own stalls, taken off the time a worker counts as silent
        self.listening = ListeningClock()
        self.worker_methods: dict[str, Callable[[Replica, Any], Any]] = {}
        self.worker_notifications: dict[str, Callable[[Replica, Any], None]] = {}
        # more environment for a process about to start (the daemon: the gateway's token)
        self.environment_provider: Callable[[ProcessReplica], dict[str, str]] | None = None
        # the worker SDK on every release's PYTHONPATH (release.py; the daemon makes it)
        self.release_sdk: str | None = None
        self.sandbox_program = "bwrap"  # [supervisor] bwrap: for sandbox = "bwrap"
        # corral's own files, which no sandboxed agent may write or reach (the daemon's)
        self.protected_paths: list[tuple[str, str]] = []
        # agent state checkpoints by (agent, replica): (wall time, state), given back in
        # `initialize` after a restart; subscribers to Checkpoint persist them (the
        # daemon: SQLite)
        self.checkpoints: dict[tuple[str, int], tuple[float, Any]] = {}
        on_notification(self.worker_notifications, StateCheckpointParams, self._on_checkpoint)
        self.mcp: McpPool[McpServerSpec, McpServerReplica] = McpPool(
            self._new_mcp_instance, self._wait_mcp_serving)
        self.mcp.on_change = self._list_changed
        # the tenants' quotas (tenants.py): with none declared, nothing is bounded
        self.tenancy = Tenancy(self.agents, self.stream)
        self.tenant_nodes: TenantNodes | None = None  # a cgroup per tenant, where delegated
        self.tasks = TaskManager(self, tool_router=self._route_tool,
                                 tool_lister=self._list_tools, journal=journal,
                                 kept=tasks_kept, kept_bytes=tasks_kept_bytes,
                                 queue=task_queue, tenancy=self.tenancy)
        self.tasks.worker.allow_of = lambda r: self.allowlist(r.spec)
        self.events = EventBus(self.stream, self.worker_methods, self.worker_notifications)
        self.agent_mcp = AgentMcp(self.mcp, self.stream, self.worker_methods)
        # autoscaling, sleep and wake of elastic agents (elastic.py)
        self.elastic = Elastic(self)
        # health checks of agents with [health] (health.py); nothing for the others
        self.health_board = HealthBoard(self)
        # plain programs' $NOTIFY_SOCKETs (plain.py), one a life, in a directory of its own
        self.notify_dir = NotifyDir()

    # -- lifecycle of the supervisor itself -----------------------------------------------
    async def __aenter__(self) -> Supervisor:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        self.containment.open()
        tree = self.containment.tree
        if tree is not None and self.tenant_nodes is None:
            nodes = self.tenant_nodes = self.containment.nodes = TenantNodes(
                tree, self, self.stream)
            self.tenancy.kernel = set(tree.controllers)
            self.stream.subscribe(lambda _: nodes.retune_all(), QuotasChanged)
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self._heartbeat_loop())
        self.elastic.start()

    async def close(self, *, graceful: bool = True) -> None:
        """Stop every agent (gracefully unless told not to) and the heartbeat loop."""
        self.closing = True
        await self.elastic.close()
        # tool servers last: agents may use them while stopping
        rolling = [r for a in self.agents.values() for r in a.replacing]
        for a in self.agents.values():
            if a._starter is not None:
                a._starter.cancel()
        for group in (list({*self.replicas(), *rolling}), list(self.mcp_instances())):
            await stop_all(group, "supervisor shutting down", graceful=graceful)
        self.zygotes.close()
        self.tasks.budgets.close()  # no gate timer outlives the agents
        if self._heartbeat is not None:
            await cancel_all([self._heartbeat])
            self._heartbeat = None
        await self.containment.close()
        self.notify_dir.close()

    # -- the API --------------------------------------------------------------------------
    def add(self, spec: AgentSpec, *, start: bool | None = None) -> Agent:
        """Add an agent; starts it when `start` (default: its `autostart`)."""
        problem = name_problem(spec.name)
        if problem:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, f"agent {shown(spec.name)}: {problem}")
        if spec.name in self.agents:
            raise SupervisorError(jsonrpc.CONFLICT, f"agent {spec.name} already exists")
        try:
            spec.argv()
            spec.check_health()
        except ConfigError as exc:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, f"agent {spec.name}: {exc}") from None
        problem = elastic_problem(spec) or protocol_problem(spec)
        if problem:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, f"agent {spec.name}: {problem}")
        self.check_fleet({spec.name: spec.replicas}, f"agent {spec.name}")
        self.check_tenants({spec.name: (spec.tenant, spec.replicas)}, f"adding {spec.name}")
        agent = Agent(self, spec)
        self.agents[spec.name] = agent
        self.elastic.track(agent)
        self.stream.emit(Roster(spec.name))
        if spec.autostart if start is None else start:
            agent.start()
        return agent

    def agent(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            raise NoSuchAgent(name, self.agents) from None

    async def remove(self, name: str) -> None:
        agent = self.agent(name)
        self.tasks.forget_agent(name)
        self.elastic.forget(name)
        await agent.stop("removed")
        self.health_board.forget(name)
        if self.agents.pop(name, None) is agent:
            self._forget(agent.replicas)
            self.stream.emit(Roster(name))

    def start(self, name: str) -> None:
        self.agent(name).start()

    async def stop(self, name: str) -> None:
        await self.agent(name).stop()

    async def restart(self, name: str) -> None:
        agent = self.agent(name)
        await agent.stop(RESTARTED)
        agent.start()

    async def scale(self, name: str, replicas: int) -> None:
        agent = self.agent(name)
        why = scale_refusal(agent.spec, replicas)
        if why:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, why)
        await agent.scale(replicas)  # refuses more than max_replicas

    async def pause(self, name: str, index: int | None = None, reason: str = "paused"
                    ) -> list[Replica]:
        """Freeze an agent's replicas (or replica `index`) where they are, memory kept: no
        task goes to them and no heartbeat judges them until resumed. Refused (nothing
        done) when one named is not running. Returns the replicas named."""
        agent = self.agent(name)
        await asyncio.gather(*(r.pause(reason, agent.spec.pause_timeout)
                               for r in to_pause(agent, index)))
        return selected(agent, index)

    def resume(self, name: str, index: int | None = None, reason: str = "resumed"
               ) -> list[Replica]:
        """Let paused replicas run on, each back in the state it was paused in (same
        process: no restart); their agent's waiting tasks go to them. Returns the
        replicas named."""
        agent = self.agent(name)
        failed = []
        for r in to_resume(agent, index):
            try:
                r.resume(reason)
            except ResumeFailed as exc:  # the others are resumed all the same
                failed.append(exc.message)
        if failed:
            raise ResumeFailed("; ".join(failed))
        return selected(agent, index)

    def check_fleet(self, replicas: dict[str, int], what: str) -> None:
        """Refuse, before any work is done, to give agents `replicas` (name -> count) when
        the fleet would grow past max_replicas: every replica is a process."""
        total = sum(len(a.replicas) for n, a in self.agents.items() if n not in replicas)
        total += sum(replicas.values())
        if total > self.max_replicas:
            raise SupervisorError(
                jsonrpc.INVALID_PARAMS,
                f"{what} would make {plural(total, 'replica')} in all, over max_replicas = "
                f"{self.max_replicas} (a [supervisor] setting)")

    def check_tenants(self, want: dict[str, tuple[str, int]], what: str) -> None:
        """Refuse, before any work is done, to give agents (name -> (tenant, replicas))
        more than their tenants' quotas allow (tenants.py); an unknown tenant too."""
        why = self.tenancy.refusal(want, what)
        if why is not None:
            code = jsonrpc.QUOTA_EXCEEDED if all(self.tenancy.known(t)
                                                 for t, _ in want.values()) \
                else jsonrpc.INVALID_PARAMS
            raise SupervisorError(code, why)

    def replicas(self, name: str | None = None) -> Iterable[Replica]:
        agents = [self.agent(name)] if name is not None else list(self.agents.values())
        for a in agents:
            yield from a.replicas

    def mcp_instances(self) -> Iterable[McpServerReplica]:
        for entry in list(self.mcp.servers.values()):
            yield from entry.all()

    def status(self, name: str | None = None) -> list[ReplicaStatus]:
        return [r.status() for r in self.replicas(name)]

    def runtime_stats(self) -> Stats:
        s = msgspec.structs.replace(self.stats)
        s.active = sum(1 for a in self.agents.values() for r in a.replicas if r.state in LIVE)
        s.loop_stalls = self.listening.stalls
        s.longest_stall = round(self.listening.longest, 3)
        s.restarts_by_cause = dict(self.stats.restarts_by_cause)
        s.subscriber_failures = self.stream.failures
        return s

    # -- events ---------------------------------------------------------------------------
    def subscribe(self, maxsize: int = 10000) -> asyncio.Queue[Event]:
        """A queue of every future transition; a full queue drops events rather than
        block. (A callback for any event type: `self.stream.subscribe`.)"""
        q: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._event_queues[q] = self.stream.subscribe(functools.partial(_offer, q), Event)
        return q

    def unsubscribe(self, q: asyncio.Queue[Event]) -> None:
        sub = self._event_queues.pop(q, None)
        if sub is not None:
            self.stream.unsubscribe(sub)

    def _forget(self, replicas: Iterable[Replica]) -> None:
        """Agent replicas that are gone for good leave the census."""
        for r in replicas:
            self.census[r.state] -= 1

    # -- the ReplicaHost protocol (process_replica.py, replica.py, mcpserver.py) ----------
    def replica_added(self, r: ProcessReplica) -> None:
        """A new agent replica (in state Initial) joins the census."""
        if r.kind == "agent":
            self.census[r.state] += 1

    def transitioned(self, r: ProcessReplica, event: Event) -> None:
        if r.kind == "agent":
            self.census[event.previous] -= 1
            self.census[event.state] += 1
        log.debug("%s %s: %s -> %s (%s: %s)", event.kind, r.label, event.previous,
                  event.state, event.cause, event.reason)
        self.stream.emit(event)
        if self._waiters:
            keep = []
            for pred, fut in self._waiters:
                if fut.done():
                    continue
                if pred(event):
                    fut.set_result(event)
                else:
                    keep.append((pred, fut))
            self._waiters = keep
        self._look_at_conditions()

    def _look_at_conditions(self) -> None:
        if self._conditions:
            keep = []
            for cond, fut in self._conditions:
                if fut.done():
                    continue
                if cond():
                    fut.set_result(None)
                else:
                    keep.append((cond, fut))
            self._conditions = keep

    # -- health (health.py's HealthHost) --------------------------------------------------
    def readiness_changed(self, r: Replica) -> None:
        if r.health_ready:
            self.tasks.pump(r.name)
        self._look_at_conditions()

    def publish(self, topic: str, data: Any) -> None:
        # about an agent: in its tenant's part of the bus, not every tenant's
        agent = data.get("agent") if isinstance(data, dict) else None
        tenant = self.tenancy.tenant_of(agent) if isinstance(agent, str) else None
        self.events.publish(topic, data, "corral", tenant)

    def agent_replicas(self, agent: str) -> list[Replica]:
        a = self.agents.get(agent)
        return a.replicas if a is not None else []

    async def healthy(self, new: list[Replica], spec: AgentSpec, deadline: float
                      ) -> str | None:
        """None once every process of `new` (being started) is Ready, passes its readiness
        check where the agent has one ([health], health.py), and has stayed so for
        `spec.min_healthy_time` seconds, all within `deadline` seconds; else why not (the
        exit's reason, as `status` shows it)."""
        give_up = time.monotonic() + deadline

        def broke() -> Replica | None:
            # an exit, even one its policy would restart, fails the rollout at once
            return next((r for r in new if r.last_exit is not None
                         or r.state in STOPPED), None)

        try:
            await self.wait_for(lambda: broke() is not None or all(
                r.serving and r.health_ready for r in new), deadline)
        except TimeoutError:
            late = next(r for r in new if not (r.serving and r.health_ready))
            if late.serving and late.health is not None:
                return (f"not ready within {deadline:g} s: "
                        f"{late.health.reason or 'unready'}")
            return f"not Ready within {deadline:g} s ({late.state}: {late.reason})"
        r = broke()
        if r is None and spec.min_healthy_time:
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: any(not (r.serving and r.health_ready)
                                                for r in new), spec.min_healthy_time)
            r = next((r for r in new if not (r.serving and r.health_ready)), None)
            if r is None and time.monotonic() > give_up:
                return (f"not Ready for min_healthy_time ({spec.min_healthy_time:g} s) "
                        f"within {deadline:g} s")
        if r is not None:
            if r.serving and r.health is not None:
                return r.health.reason or "unready"
            return r.last_exit or r.reason
        return None

    async def wait_for(self, cond: Callable[[], bool], timeout: float) -> None:
        """Wait until `cond()` holds, checked now and after every event and readiness
        change (states, task counts and readiness only change with one); TimeoutError
        after `timeout`."""
        if cond():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._conditions.append((cond, fut))
        try:
            await within(fut, timeout)
        finally:
            if not fut.done():
                fut.cancel()

    async def wait_event(self, pred: Callable[[Event], bool], timeout: float) -> Event:
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await within(fut, timeout)
        finally:
            if not fut.done():
                fut.cancel()

    async def wait_state(
        self,
        name: str,
        states: State | Iterable[State],
        *,
        replica: int = 0,
        timeout: float = 10.0,
    ) -> Replica:
        """Wait until replica `replica` of `name` is in one of `states` (now or later)."""
        r = self.agent(name).replicas[replica]
        await self.wait_replica(r, states, timeout)
        return r

    async def wait_replica(self, r: ProcessReplica, states: State | Iterable[State],
                           timeout: float) -> None:
        """Wait until `r` (an agent's replica or an MCP instance) is in one of `states`."""
        wanted = {states} if isinstance(states, State) else set(states)
        if r.state in wanted:
            return
        values = {s.value for s in wanted}
        try:
            await self.wait_event(
                lambda e: e.kind == r.kind and e.name == r.name and e.replica == r.index
                and e.state in values,
                timeout,
            )
        except TimeoutError:
            # a bare TimeoutError leaves the caller guessing; what the replica is doing
            # and why it last exited (e.g. the agent's import error) is the answer
            raise TimeoutError(self._not_reached(r, values, timeout)) from None

    @staticmethod
    def _not_reached(r: ProcessReplica, values: set[str], timeout: float) -> str:
        msg = (f"{r.label} did not reach {' or '.join(sorted(values))} within {timeout:g} s: "
               f"it is {r.state.value}: {r.reason}")
        if r.last_exit and r.last_exit not in r.reason:
            msg += f"; last exit: {r.last_exit}"
        return msg

    async def wait_all_serving(self, timeout: float = 30.0) -> None:
        """Wait until every replica of every agent that is meant to run is serving."""
        def settled(_: Event | None = None) -> bool:
            return not any(self.census[s] for s in TRANSIENT)

        if not settled():
            await self.wait_event(settled, timeout)

    # -- MCP tool servers -----------------------------------------------------------------
    def add_mcp_server(self, spec: McpServerSpec) -> None:
        problem = name_problem(spec.name, server=True)
        if problem:
            raise SupervisorError(jsonrpc.INVALID_PARAMS,
                                  f"MCP server {shown(spec.name)}: {problem}")
        try:
            spec.check()
        except ConfigError as exc:
            raise SupervisorError(jsonrpc.INVALID_PARAMS,
                                  f"MCP server {spec.name}: {exc}") from None
        self.mcp.add(spec)

    def retune_mcp_server(self, spec: McpServerSpec) -> bool:
        """Apply a changed spec without a restart where only roots or the log level
        differ (the server is told); False when it needs a restart."""
        entry = self.mcp.server(spec.name)
        old = msgspec.structs.replace(entry.spec, roots=spec.roots, log_level=spec.log_level)
        if old != spec:
            return False
        entry.spec = spec
        for inst in entry.all():
            inst.retune(spec)
        return True

    def _new_mcp_instance(self, spec: McpServerSpec, name: str, index: int,
                          owner: str | None) -> McpServerReplica:
        if spec.remote:  # a connection, not a process: supervised the same way
            return RemoteMcpServer(self, spec, name, index, owner)
        return McpServerReplica(self, spec, name, index, owner)

    async def _wait_mcp_serving(self, inst: McpServerReplica, timeout: float
                                ) -> McpServerReplica:
        with contextlib.suppress(TimeoutError):
            await self.wait_replica(inst, {*SERVING, State.TERMINATED}, timeout)
        if inst.state not in SERVING:
            raise RpcError(jsonrpc.REFUSED, f"MCP server {inst.label} is not serving: "
                                            f"{inst.reason}")
        return inst

    def _route_tool(self, replica: Replica, name: str, arguments: dict[str, Any],
                    task: Any) -> Any:
        def progress(p: dict[str, Any]) -> None:
            if task is not None:
                self.tasks.report_progress(task, {**p, "tool": name})

        return self.mcp.call(name, arguments, owner=replica.label, on_progress=progress)

    async def _list_tools(self, replica: Replica) -> dict[str, Any]:
        return {"tools": await self.mcp.list_tools(owner=replica.label,
                                                   allow=self.allowlist(replica.spec))}

    def tenant_spec(self, tenant: str) -> TenantSpec | None:
        return self.tenancy.specs.get(tenant)

    # -- the tenant cgroups' hook (tenantcgroups.py) -------------------------------------
    def tenant_of_process(self, kind: str, name: str) -> str | None:
        if kind in ("agent", CHECK_KIND):  # an agent's checks are in its tenant's cgroup
            a = self.agents.get(name)
            return a.spec.tenant if a is not None else None
        e = self.mcp.servers.get(name) if kind == "mcp" else None
        return e.spec.tenant if e is not None else None

    def tenant_in_use(self, tenant: str) -> bool:
        return bool(self.tenancy.members(tenant)) or any(
            e.spec.tenant == tenant for e in self.mcp.servers.values())

    def allowlist(self, spec: Any) -> list[str]:
        """An agent's tools allowlist, narrowed to the MCP servers its tenant sees."""
        return visible_allow(list(getattr(spec, "tools", [])), spec.tenant,
                             {n: e.spec for n, e in self.mcp.servers.items()})

    def _list_changed(self, server: str, kind: str) -> None:
        self.stream.emit(ListChanged(server, kind))

    # -- the ReplicaHost protocol, continued ----------------------------------------------
    def replica_log(self, r: ProcessReplica, stream: str, lines: LineBlock) -> None:
        if self.stream.wants(LogLines):  # nothing made for lines nobody reads
            self.stream.emit(LogLines(r, stream, lines))

    def replica_exited(self, r: ProcessReplica, reason: str) -> None:
        self.stats.exits += 1
        self.stream.emit(Exited(r, reason))

    def replica_ready(self, r: Replica) -> None:
        self.tasks.replica_ready(r)

    def replica_down(self, r: Replica) -> None:
        self.tasks.replica_down(r)

    def wake(self, name: str) -> None:
        """A task waits for `name`, which has no replica: an elastic agent wakes."""
        self.elastic.wake(name)

    def environment(self, r: ProcessReplica) -> dict[str, str]:
        provide = self.environment_provider
        return provide(r) if provide is not None else {}

    def zygote_environment(self, agent_env: dict[str, str]) -> dict[str, str]:
        """What a zygote's preload imports run with: corral's own environment and the
        agent's PYTHONPATH (part of the zygote's key); each agent gets its own complete
        environment in the forked child, before any of its code runs."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        if "PYTHONPATH" in agent_env:
            env["PYTHONPATH"] = agent_env["PYTHONPATH"]
        else:
            env.pop("PYTHONPATH", None)
        return env

    def initial_state(self, replica: Replica) -> Any:
        saved = self.checkpoints.get((replica.name, replica.index))
        if saved is None:
            return None
        ttl = replica.spec.state_ttl
        if ttl and time.time() - saved[0] > ttl:
            return None
        return saved[1]

    def _on_checkpoint(self, replica: Replica, p: StateCheckpointParams) -> None:
        if p.state is msgspec.UNSET:
            return
        when = time.time()
        self.checkpoints[(replica.name, replica.index)] = (when, p.state)
        self.stream.emit(Checkpoint(replica.name, replica.index, when, p.state))

    def worker_request(self, replica: Replica, method: str, raw: Any) -> Any:
        handler = self.worker_methods.get(method)
        if handler is None:
            raise jsonrpc.method_not_found(method)
        params = _object(raw)
        if params is None:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"{method}: params must be an object")
        return handler(replica, params)

    def worker_notification(self, replica: Replica, method: str, raw: Any) -> None:
        handler = self.worker_notifications.get(method)
        if handler is None:
            return
        params = _object(raw)
        if params is None:
            replica.note(f"ignored {method}: params must be an object")
            return
        handler(replica, params)

    # -- the heartbeat loop ---------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """Visit every live replica once per interval, in slices spread over the interval so
        that no turn of the loop does more than HEARTBEAT_SLICE visits; sample usage at
        most SAMPLES_PER_SECOND times a second in all (a large fleet is sampled less often
        per replica, never more work per second)."""
        loop = asyncio.get_running_loop()
        round_start = prev_end = loop.time()
        rnd = 0
        work = self.heartbeat_work
        while True:
            interval = self.heartbeat_interval
            reps: list[ProcessReplica] = [*self.replicas(), *self.mcp_instances()]
            n = len(reps)
            slices = max(1, -(-n // HEARTBEAT_SLICE))
            # each replica is sampled every `every` rounds; fds (a directory listing, the
            # dearest sample) every FDS_EVERY of its samples
            every = max(1, -(-n // max(1, int(SAMPLES_PER_SECOND * interval))))
            for i in range(slices):
                due = round_start + i * interval / slices
                await asyncio.sleep(max(0.0, due - loop.time()))
                woke = loop.time()
                # a slice woken late is a stall of corral, taken off every worker's
                # silence; counted from the end of the previous slice, so that slices run
                # back to back after one stall do not count it again
                stall = self.listening.tick(woke - max(due, prev_end))
                if stall:
                    self._on_stall(stall)
                t0 = time.perf_counter()
                now = self.listening.now()
                sampled = 0
                for j in range(i * HEARTBEAT_SLICE, min(n, (i + 1) * HEARTBEAT_SLICE)):
                    r = reps[j]
                    turn = (j + rnd) % every == 0
                    sampled += turn
                    try:
                        r.heartbeat(now, r.spec.heartbeat_timeout or self.heartbeat_timeout,
                                    turn, turn and (rnd // every) % FDS_EVERY == 0)
                    except Exception:
                        log.exception("heartbeat of %s failed", r.label)
                spent = time.perf_counter() - t0
                work.slices += 1
                visits = min(n, (i + 1) * HEARTBEAT_SLICE) - i * HEARTBEAT_SLICE
                work.visits += visits
                work.most_visits = max(work.most_visits, visits)
                work.samples += sampled
                work.busy_seconds += spent
                work.longest_slice = max(work.longest_slice, spent)
                prev_end = loop.time()
            work.rounds += 1
            work.replicas = n
            work.slices_per_round = slices
            work.sample_every_rounds = every
            rnd += 1
            round_start += interval
            if round_start < loop.time():  # behind (a stalled loop): start afresh
                round_start = loop.time()
            # once per round: reap re-parented zombies; a /proc pass if an exit asked
            self.containment.min_sweep_interval = interval
            try:
                self.containment.tick()
            except Exception:
                log.exception("containment tick failed")
            # tenants' memory and CPU quotas, on this round's samples (tenants.py)
            for r, why in self.tenancy.caps():
                r.take_down(why, graceful=True, cause=Cause.CAP)
            self.stream.emit(TICK)

    def _on_stall(self, seconds: float) -> None:
        log.warning("event loop stalled for %.2f s; not counted as silence of any worker",
                    seconds)
        self.stream.emit(Stall(seconds))


def default_max_replicas() -> int:
    """As many replicas as the machine can hold: a process needs a few MiB at the least
    (8 MiB counted) and a pid (a quarter of pid_max left to everything else)."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            pids = int(f.read()) // 4
    except (OSError, ValueError):
        pids = 8192
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (8 * 1024 * 1024)
    return max(16, min(pids, memory))


# spawns in flight at once (on their way to a running process, not to Ready): the pacing
# of a mass start; one slow spawn holds one slot
SPAWN_CONCURRENCY = 16


class Starter:
    """The starts of one start_all still waiting for their turn (pacing.py)."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        """Those not started yet stay down (the agent was stopped meanwhile)."""
        self.cancelled = True

    def start(self, r: Replica) -> None:
        if not self.cancelled:
            r.start(by_hand=True)


def start_all(replicas: list[Replica]) -> Starter | None:
    """Start these replicas: BATCH now, the rest BATCH per later turn of the loop, in the
    loop's one queue of paced work (pacing.py); returns what cancels those still waiting
    (None when none are). Starting a replica is a lifecycle event and the first steps of
    its process: a thousand in one turn stalled the loop for a second."""
    for r in replicas[:BATCH]:
        r.start(by_hand=True)
    if len(replicas) <= BATCH:
        return None
    starter = Starter()
    p = pacer()
    for r in replicas[BATCH:]:
        p.submit(starter.start, r)
    return starter


async def stop_all(replicas: Iterable[ProcessReplica], reason: str, *,
                   graceful: bool = True) -> None:
    """Stop these replicas concurrently; returns when all are down (each after at most its
    own grace periods: no waits add up). Each stop's first steps (its event, the shutdown
    request, stdin closed) take a place in the loop's queue of paced work, as do the
    exits that follow (process.py), so a mass stop runs BATCH steps per turn."""
    replicas = list(replicas)
    p = pacer()
    for r in replicas:
        p.submit(functools.partial(r.begin_stop, reason, graceful=graceful))
    await p.turn(lambda: None)  # every stop begun (in order: the queue is FIFO)
    await asyncio.gather(*(r.stopped() for r in replicas))


async def start_each(replicas: Iterable[Replica]) -> None:
    """Start these replicas by hand, paced as stop_all's stops are (one FIFO per loop: a
    stop asked after them still comes after them); returns once every start has begun
    (each replica is Starting, or refused and says why)."""
    p = pacer()
    for r in replicas:
        p.submit(functools.partial(r.start, by_hand=True))
    await p.turn(lambda: None)


def _object(raw: Any) -> dict[str, Any] | None:
    """A worker's params as a dict (absent params are {}); None if they are not an object."""
    if raw is msgspec.UNSET:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:  # pragma: no cover - the envelope was valid JSON
        return None
    return value if isinstance(value, dict) else None


def _offer(q: asyncio.Queue[Event], event: Event) -> None:
    if not q.full():  # a reader that does not keep up loses events; corral goes on
        q.put_nowait(event)
