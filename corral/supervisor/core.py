"""The Supervisor: the engine's composition (its parts, each given what it needs), the
replica registry and census, the host protocol its processes run under, the heartbeat,
and the Python API. One event loop owns everything and nothing here blocks it; a service
is given the parts (`Supervisor.parts`), never the Supervisor.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import DEFAULT_MAX_LINE, LineBlock, RpcError
from ..mcp.pins import Pins
from ..timeouts import cancel_all
from ..workerproto import StateCheckpointParams
from .agent import Agent
from .agents import Agents
from .config import AgentSpec, McpServerSpec, TenantSpec
from .containment import CgroupMode, Containment
from .egressdoors import Doors
from .elastic import Elastic
from .errors import NoSuchAgent, SupervisorError
from .events import EventBus
from .health import CHECK_KIND, HealthBoard
from .heartbeat import HEARTBEAT_SLICE, Heartbeat
from .labels import Labels
from .lifecycle import State
from .listening import ListeningClock
from .mcproutes import AgentMcp
from .notifysock import NotifyDir
from .parts import Parts
from .plain import make_replica
from .process import abandoned_spawns
from .process_replica import (
    LogBatch,
    ProcessReplica,
    ReplicaExit,
    ReplicaStatus,
    Transition,
    WorkTransition,
)
from .quotas import QuotasChanged, Tenancy
from .refusals import TOPIC as REFUSED_TOPIC
from .refusals import BoundaryRefusals, BoundaryRefused
from .replica import Replica
from .replicastates import ReplicaStates
from .startstop import stop_all
from .stats import HeartbeatWork, Stats
from .stream import Roster, Stream, Subscription
from .tasks import KEEP_FINISHED, KEEP_FINISHED_BYTES, Queue, TaskJournal, TaskManager, WaitClock
from .tasks.call import Call
from .tasks.interceptors import Interceptors, TaskInterceptor, ToolPorts
from .tasks.personwait import held
from .tenantcgroups import TenantNodes
from .tools import Tools
from .tuning import Tuning
from .waits import Waits
from .workercalls import on_notification
from .zygote import Zygotes

__all__ = ["HEARTBEAT_SLICE", "Agent", "NoSuchAgent", "Supervisor", "SupervisorError"]

# spawns in flight at once (on their way to a running process, not to Ready): the pacing
# of a mass start; one slow spawn holds one slot
SPAWN_CONCURRENCY = 16

log = logging.getLogger("corral.supervisor")


class Supervisor:
    """Runs agents as capped processes and keeps them alive. Use as `async with
    Supervisor() as sup:`; `close()` stops every agent gracefully."""

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
        keep_tasks: int = KEEP_FINISHED,
        keep_tasks_bytes: int = KEEP_FINISHED_BYTES,
        task_queue: Queue | None = None,
        spared: Container[int] = frozenset(),
        interceptors: Sequence[TaskInterceptor] = (),
        clock: WaitClock | None = None,
        refusals: BoundaryRefusals | None = None,
        labels: Labels | None = None,
    ) -> None:
        """`journal` makes tasks durable; `task_queue` holds waiting tasks (default: the
        local heap; a cluster node's: corral.cluster.queue); `spared`: the embedding
        program's own children (containment.Containment); `refusals`: the boundary's
        recorder, made before the engine where what is made before needs it (its stream is
        the engine's); `labels`: the policy's (labels.py), which its tasks' waits for
        their children read into."""
        self.tuning = Tuning(heartbeat_interval, heartbeat_timeout,
                             max_replicas or default_max_replicas())
        self.max_line = max_line
        self.state_dir = state_dir  # where remote servers' OAuth tokens are kept
        self.refusals = refusals if refusals is not None else BoundaryRefusals(Stream())
        # every event goes out on it; its subscribers cannot break it
        self.stream = self.refusals.stream
        self.containment = Containment(cgroups, stream=self.stream, spared=spared)
        self.stats = Stats()
        self.heartbeat_work = HeartbeatWork()
        self.zygotes = Zygotes(self.containment)
        self.spawn_slots = asyncio.Semaphore(SPAWN_CONCURRENCY)
        # agent replicas by state, kept as transitions happen: read in O(1) instead of
        # scanning every replica per event
        self.census: Counter[State] = Counter()
        self.closing = False
        self.started_at = time.monotonic()
        self._environment: Callable[[ProcessReplica], dict[str, str]] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._event_queues: dict[asyncio.Queue[Transition], Subscription] = {}
        # the loop's own stalls, taken off the time a worker counts as silent
        self.listening = ListeningClock()
        self.worker_methods: dict[str, Callable[[Replica, Any], Any]] = {}
        self.worker_notifications: dict[str, Callable[[Replica, Any], None]] = {}
        self.states = ReplicaStates(self.stream)  # agents' state checkpoints, by replica
        self.checkpoints = self.states.saved
        on_notification(self.worker_notifications, StateCheckpointParams,
                        self.states.on_checkpoint)
        self.waits = Waits(self.census)
        self.egress_doors = Doors(self.refusals)
        # (their home given by the daemon: the node's database, or the cluster's Redis)
        self.mcp = Tools(self, self.waits, self.stream, Pins())
        registry: dict[str, Agent] = {}  # the agents by name (the Agents part reads it)
        self.tenancy = Tenancy(registry, self.stream)
        self.tenant_nodes: TenantNodes | None = None  # a cgroup per tenant, where delegated
        tools = ToolPorts(self._route_tool, self._list_tools, lambda r: self.mcp.allowlist(r.spec))
        self.tasks = TaskManager(self, tools=tools, journal=journal, kept=keep_tasks,
                                 kept_bytes=keep_tasks_bytes, queue=task_queue, clock=clock,
                                 tenancy=self.tenancy, interceptors=Interceptors(interceptors),
                                 labels=labels)
        # members of the host protocol (replica.AgentHost) that are another part's own
        self.replica_ready = self.tasks.replica_ready
        self.replica_down = self.tasks.replica_down
        self.initial_state = self.states.initial
        self.answers_read = self.tasks.dispatch.answers_read
        self.events = EventBus(self.stream, self.worker_methods, self.worker_notifications)
        self.stream.subscribe(self._refused, BoundaryRefused)
        self.stream.subscribe(self._roster, Roster)
        self.agent_mcp = AgentMcp(self.mcp, self.stream, self.worker_methods)
        self.elastic = Elastic(registry, self.tasks, self.stream, self.tenancy, self.tuning)
        self.wake = self.elastic.wake
        self.health_board = HealthBoard(self.stream, self.containment, registry,
                                        self.readiness_changed, self.publish)
        self.agents = Agents(registry, new_replica=functools.partial(make_replica, self),
                             census=self.census, stream=self.stream, waits=self.waits,
                             tasks=self.tasks, elastic=self.elastic, health=self.health_board,
                             tenancy=self.tenancy, tuning=self.tuning, doors=self.egress_doors)
        self.notify_dir = NotifyDir()  # plain programs' $NOTIFY_SOCKETs
        self.beat = Heartbeat(lambda: [*self.agents.replicas(), *self.mcp.instances()],
                              tuning=self.tuning, listening=self.listening,
                              work=self.heartbeat_work, containment=self.containment,
                              tenancy=self.tenancy, stream=self.stream)
        self.parts = Parts(agents=self.agents, tools=self.mcp, quotas=self.tenancy,
                           elastic=self.elastic, bus=self.events, tasks=self.tasks,
                           stream=self.stream, containment=self.containment,
                           health=self.health_board, tuning=self.tuning,
                           checkpoints=self.checkpoints, zygotes=self.zygotes,
                           heartbeat=self.heartbeat_work, runtime_stats=self.runtime_stats,
                           refusals=self.refusals)

    # -- lifecycle of the supervisor itself -----------------------------------------------
    async def __aenter__(self) -> Supervisor:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self, environment: Callable[[ProcessReplica], dict[str, str]] | None = None
             ) -> None:
        """Open the engine (again: a no-op but for `environment`): more environment for
        each process it starts from now on (the daemon's)."""
        self._environment = environment
        self.containment.open()
        tree = self.containment.tree
        if tree is not None and self.tenant_nodes is None:
            nodes = self.tenant_nodes = TenantNodes(tree, self, self.stream)
            self.containment.divide(nodes)
            self.tenancy.kernel = set(tree.controllers)
            self.stream.subscribe(lambda _: nodes.retune_all(), QuotasChanged)
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self.beat.run())
        self.elastic.start()

    async def close(self, *, graceful: bool = True) -> None:
        """Stop every agent (gracefully unless told not to) and the heartbeat loop."""
        self.closing = True
        await self.elastic.close()
        # agents in `after`'s reverse, a layer at a time; tool servers last (agents use them)
        groups: list[Iterable[ProcessReplica]] = [*self.agents.stop_layers(),
                                                  list(self.mcp.instances())]
        for group in groups:
            await stop_all(group, "supervisor shutting down", graceful=graceful)
        self.zygotes.close()
        self.egress_doors.close()  # (after the agents: their sandboxes are in them)
        self.tasks.budgets.close()  # no gate timer outlives the agents
        if self._heartbeat is not None:
            await cancel_all([self._heartbeat])
            self._heartbeat = None
        await abandoned_spawns()  # (a check cancelled mid-spawn: its fork's pipes)
        await self.containment.close()
        self.notify_dir.close()

    def _roster(self, e: Roster) -> None:
        """An agent removed: its per-agent tool servers' instances go with it (decision
        1809), its kept tools allowlist, and its refusals' keys (their counts kept)."""
        if e.agent not in self.agents:
            self.mcp.forget(lambda owner: owner.startswith(f"{e.agent}#"), "its agent removed")
            self.mcp.forget_agent(e.agent)
            self.refusals.forget(e.agent)

    # -- the API (README "Python API"; the parts hold the rest) ---------------------------
    def add(self, spec: AgentSpec, *, start: bool | None = None) -> Agent:
        """Add an agent; starts it when `start` (default: its `autostart`)."""
        return self.agents.add(spec, start=start)

    def agent(self, name: str) -> Agent:
        return self.agents.agent(name)

    async def remove(self, name: str) -> None:
        await self.agents.remove(name)

    def start(self, name: str) -> None:
        self.agents.start(name)

    async def stop(self, name: str) -> None:
        await self.agents.stop(name)

    async def restart(self, name: str) -> None:
        await self.agents.restart(name)

    async def scale(self, name: str, replicas: int) -> None:
        await self.agents.scale(name, replicas)

    async def pause(self, name: str, index: int | None = None, reason: str = "paused"
                    ) -> list[Replica]:
        return await self.agents.pause(name, index, reason)

    def resume(self, name: str, index: int | None = None, reason: str = "resumed"
               ) -> list[Replica]:
        return self.agents.resume(name, index, reason)

    def replicas(self, name: str | None = None) -> Iterable[Replica]:
        return self.agents.replicas(name)

    def status(self, name: str | None = None) -> list[ReplicaStatus]:
        return self.agents.status(name)

    def add_mcp_server(self, spec: McpServerSpec) -> None:
        self.mcp.add_server(spec)

    def runtime_stats(self) -> Stats:
        s = msgspec.structs.replace(self.stats)
        s.active = sum(1 for a in self.agents.values() for r in a.replicas if r.machine.live)
        s.loop_stalls = self.listening.stalls
        s.longest_stall = round(self.listening.longest, 3)
        s.restarts_by_cause = dict(self.stats.restarts_by_cause)
        s.subscriber_failures = self.stream.failures
        return s

    async def wait_state(self, name: str, states: State | Iterable[State], *,
                         replica: int = 0, timeout: float = 60.0) -> Replica:
        """Wait until replica `replica` of `name` is in one of `states` (now or later).
        The wait ends when the state is reached, so its bound is a loaded host's start."""
        r = self.agent(name).replicas[replica]
        await self.waits.wait_replica(r, states, timeout)
        return r

    async def wait_all_serving(self, timeout: float = 30.0) -> None:
        """Wait until every replica of every agent that is meant to run is serving."""
        await self.waits.wait_all_serving(timeout)

    async def wait_for(self, cond: Callable[[], bool], timeout: float) -> None:
        await self.waits.wait_for(cond, timeout)

    async def wait_event(self, pred: Callable[[Transition], bool], timeout: float) -> Transition:
        return await self.waits.wait_event(pred, timeout)

    # -- events ---------------------------------------------------------------------------
    def subscribe(self, maxsize: int = 10000, *, work: bool = True
                  ) -> asyncio.Queue[Transition]:
        """A queue of every future transition (`work`: with a serving replica's moves
        between READY, BUSY and IDLE); a full queue drops events rather than block. (A
        callback for any event type: `self.stream.subscribe`.)"""
        q: asyncio.Queue[Transition] = asyncio.Queue(maxsize)
        kinds = (Transition, WorkTransition) if work else (Transition,)
        self._event_queues[q] = self.stream.subscribe(functools.partial(_offer, q), *kinds)
        return q

    def unsubscribe(self, q: asyncio.Queue[Transition]) -> None:
        sub = self._event_queues.pop(q, None)
        if sub is not None:
            self.stream.unsubscribe(sub)

    # -- the ReplicaHost protocol (process_replica.py, replica.py, mcpserver.py) ----------
    def replica_added(self, r: ProcessReplica) -> None:
        if r.kind == "agent":
            self.census[r.state] += 1

    def transitioned(self, r: ProcessReplica, event: Transition) -> None:
        if r.kind == "agent":
            self.census[event.previous] -= 1
            self.census[event.state] += 1
        log.debug("%s %s: %s -> %s (%s: %s)", event.kind, r.label, event.previous,
                  event.state, event.cause, event.reason)
        self.stream.emit(event)
        self.waits.transitioned(event)

    def readiness_changed(self, r: Replica) -> None:
        if r.health_ready:
            self.tasks.pump(r.name)
        self.waits.look()

    def publish(self, topic: str, data: Any) -> None:
        # about an agent: in its tenant's part of the bus, not every tenant's
        agent = data.get("agent") if isinstance(data, dict) else None
        tenant = self.tenancy.tenant_of(agent) if isinstance(agent, str) else None
        self.events.publish(topic, data, "corral", tenant)

    def _refused(self, e: BoundaryRefused) -> None:
        # in the agent's tenant's part of the bus, as its other events
        tenant = e.tenant if e.tenant is not None else self.tenancy.tenant_of(e.agent)
        self.events.publish(REFUSED_TOPIC, msgspec.structs.asdict(e), "corral", tenant)

    def _route_tool(self, call: Call) -> Any:
        wire, r, client = call.wire, call.replica, call.client
        # (a gateway client's that is no agent's is made for its own owner)
        owner = client.owner if client is not None else r.label if r is not None else None
        if call.task is None and wire is not None:  # a gateway client's, of no task
            return self.mcp.call(call.name, call.arguments, owner=owner,
                                 on_progress=wire.on_progress, relay=wire.relay,
                                 on_log=wire.on_log, caller=wire.caller, key=call.key)

        def progress(p: dict[str, Any]) -> None:
            if call.task is not None:
                self.tasks.report_progress(call.task, {**p, "tool": call.name})
        # a task's: a person answers the server's elicitation within the call's deadline,
        # asked (tasks/elicitations.py) only when the server elicits
        asker = None if call.task is None else functools.partial(
            self.tasks.elicitations.ask, call, self.mcp.timeout_of(call.name), held(),
            itertools.count(1))
        return self.mcp.call(call.name, call.arguments, owner=owner,
                             on_progress=progress, asker=asker, key=call.key)

    async def _list_tools(self, replica: Replica) -> dict[str, Any]:
        return {"tools": await self.mcp.list_tools(owner=replica.label,
                                                   allow=self.mcp.allowlist(replica.spec))}

    def tenant_spec(self, tenant: str) -> TenantSpec | None:
        return self.tenancy.specs.get(tenant)

    # -- the tenant cgroups' hook (tenantcgroups.py) -------------------------------------
    def tenant_of_process(self, kind: str, name: str) -> str | None:
        if kind in ("agent", CHECK_KIND):  # an agent's checks are in its tenant's cgroup
            a = self.agents.get(name)
            return a.spec.tenant if a is not None else None
        return self.mcp.tenant_of(name) if kind == "mcp" else None

    def tenant_in_use(self, tenant: str) -> bool:
        return bool(self.tenancy.members(tenant)) or self.mcp.used_by(tenant)

    # -- the ReplicaHost protocol, continued ----------------------------------------------
    def replica_log(self, r: ProcessReplica, stream: str, lines: LineBlock) -> None:
        if self.stream.wants(LogBatch):  # nothing made for lines nobody reads
            self.stream.emit(LogBatch(r, stream, lines))

    def replica_exited(self, r: ProcessReplica, reason: str) -> None:
        self.stats.exits += 1
        self.stream.emit(ReplicaExit(r, reason))

    def environment(self, r: ProcessReplica) -> dict[str, str]:
        provide = self._environment
        return provide(r) if provide is not None else {}

    def zygote_environment(self, agent_env: dict[str, str]) -> dict[str, str]:
        """What a zygote's preload imports run with: corral's own environment and the
        agent's PYTHONPATH (each agent gets its own in the forked child)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        if "PYTHONPATH" in agent_env:
            env["PYTHONPATH"] = agent_env["PYTHONPATH"]
        else:
            env.pop("PYTHONPATH", None)
        return env

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


def _object(raw: Any) -> dict[str, Any] | None:
    """A worker's params as a dict (absent params are {}); None if they are not an object."""
    if raw is msgspec.UNSET:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:  # pragma: no cover - the envelope was valid JSON
        return None
    return value if isinstance(value, dict) else None


def _offer(q: asyncio.Queue[Transition], event: Transition) -> None:
    if not q.full():  # a reader that does not keep up loses events; corral goes on
        q.put_nowait(event)
