"""The autoscaler's loop (docs/elastic.md): once per heartbeat interval it feeds every
elastic agent's decider (autoscale.py) and applies what it decides through `Agent.scale`;
a task for a sleeping agent wakes it at once (`wake`). Scale-down takes idle replicas
only; a decision is not kept across daemon restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..timeouts import cancel_all, kept
from .autoscale import Decider, Policy, ScaleDecision
from .config import AgentSpec

if TYPE_CHECKING:
    from .agent import Agent
    from .quotas import Tenancy
    from .replica import Replica
    from .stream import Stream
    from .tasks import TaskManager
    from .tuning import Tuning

log = logging.getLogger("corral.supervisor")

KEPT_DECISIONS = 100  # per agent, for `corral history`

ASLEEP = "asleep"  # what `corral status` shows of an agent at zero replicas
AWAKE = "awake"
WAKING = "waking"


class Scaling(NamedTuple):
    """An autoscaling decision that changed (or tried to change) an agent's count."""

    time: float
    agent: str
    previous: int
    replicas: int  # the count reached
    desired: int
    direction: str  # "up", "down", "wake", "sleep", "held"
    reason: str


def policy_of(spec: AgentSpec, awake: int) -> Policy:
    """`awake`: the count an agent without autoscale (hibernate_after alone) wakes to."""
    a = spec.autoscale
    if a is None:
        return Policy(awake, awake, upscale_delay=0.0, downscale_delay=0.0,
                      hibernate_after=spec.hibernate_after)
    return Policy(a.min_replicas, a.max_replicas, a.target_load, a.upscale_delay,
                  a.downscale_delay, a.max_step_up, a.idle_after, spec.hibernate_after)


class ElasticEntry:
    """An elastic agent's autoscaling state."""

    __slots__ = ("accepted", "applying", "count", "decider", "desired", "last",
                 "last_work", "spec", "state")

    def __init__(self, spec: AgentSpec, now: float) -> None:
        self.spec = spec
        self.decider = Decider(policy_of(spec, max(1, spec.replicas)))
        # the count it starts with holds for a stable window, as one set later by hand
        self.decider.changed = now
        self.count = spec.replicas  # as the autoscaler last left it
        self.last_work = now  # when it last had a task running or queued
        self.accepted = -1  # its tasks accepted, as last seen: a change is work
        self.applying = False  # a change of its count is under way
        self.desired = spec.replicas
        self.state = AWAKE
        self.last: Scaling | None = None


class Elastic:
    def __init__(self, agents: Mapping[str, Agent], tasks: TaskManager, stream: Stream,
                 tenancy: Tenancy, tuning: Tuning) -> None:
        self.agents = agents
        self.tasks = tasks
        self.stream = stream
        self.tenancy = tenancy
        self.tuning = tuning  # the loop's interval, the fleet's max_replicas
        self.entries: dict[str, ElasticEntry] = {}
        self.decisions: dict[str, deque[Scaling]] = {}
        # decisions by (agent, direction), for /metrics
        self.counts: dict[tuple[str, str], int] = {}
        self._loop: asyncio.Task[None] | None = None
        self._changes: set[asyncio.Future[None]] = set()  # changes of counts under way
        self.ticks = 0
        # with [cluster]: this node's share of each agent's tasks waiting in the
        # cluster's streams, counted as load beside its own queue (cluster/backlog.py)
        self.backlog: dict[str, int] = {}

    # -- agents -----------------------------------------------------------------------------
    def track(self, agent: Agent) -> None:
        """An agent added, or its spec changed (a reload, a rollback): elastic or not."""
        e = self.entries.get(agent.name)
        if not agent.spec.elastic:
            self.entries.pop(agent.name, None)
        elif e is None:
            self.entries[agent.name] = ElasticEntry(agent.spec, time.monotonic())
        elif e.spec is not agent.spec:
            self._respec(e, agent)

    def forget(self, name: str) -> None:
        self.entries.pop(name, None)
        self.backlog.pop(name, None)
        self.decisions.pop(name, None)
        for key in [k for k in self.counts if k[0] == name]:
            del self.counts[key]

    def decided(self, name: str) -> Sequence[Scaling]:
        return self.decisions.get(name, ())

    def status(self, name: str) -> ElasticEntry | None:
        e = self.entries.get(name)
        agent = self.agents.get(name)
        if e is not None and agent is not None and agent.spec is not e.spec:
            self._respec(e, agent)  # changed since the last tick: its bounds as they are
        return e

    def shown_state(self, name: str) -> str | None:
        """What `corral status` says of the agent: asleep, waking (woken, no replica
        serving yet) or awake; None when it is not elastic."""
        e = self.entries.get(name)
        agent = self.agents.get(name)
        if e is None or agent is None:
            return None
        if e.state == AWAKE and e.last is not None and e.last.direction == "wake" and not any(
                r.machine.takes_work for r in agent.replicas):
            return WAKING
        return e.state

    # -- the loop ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._loop is not None:
            await cancel_all([self._loop])
            self._loop = None
        for change in list(self._changes):  # the supervisor stops every replica next
            change.cancel()
        await asyncio.gather(*self._changes, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.heartbeat_interval)
            if not self.entries:
                continue
            try:
                self.tick(time.monotonic())
            except Exception:
                log.exception("autoscaler tick failed")
            self.ticks += 1

    def tick(self, now: float) -> None:
        agents = self.agents
        tasks = self.tasks
        by_agent = tasks.by_agent
        gone: list[str] = []  # no longer elastic
        for name, e in self.entries.items():
            agent = agents.get(name)
            if agent is None or e.applying or agent.replacing:
                continue
            if agent.spec is not e.spec:  # a reload, rollback or deploy changed it
                if not agent.spec.elastic:
                    gone.append(name)
                    continue
                self._respec(e, agent)
            counters = by_agent.get(name)
            running = counters.running if counters is not None else 0
            load = running + self._queued(name, agent)
            accepted = counters.counts["accepted"] if counters is not None else 0
            if load or accepted != e.accepted:
                e.last_work = now
                e.accepted = accepted
            current = len(agent.replicas)
            if current != e.count:  # `corral scale`: a change, held a stable window too
                e.count = current
                e.decider.changed = now
            if (current and e.spec.autoscale is None
                    and current != e.decider.policy.min_replicas):
                self._respec(e, agent)  # `corral scale` set the count it wakes to
            if current and all(r.machine.stopped_by_hand for r in agent.replicas):
                continue  # an operator stopped it: it stays down
            d = e.decider.decide(now, load, current, now - e.last_work)
            e.desired = d.desired
            if d.desired != current:
                self._apply(agent, e, current, d)
        for name in gone:
            del self.entries[name]

    def _respec(self, e: ElasticEntry, agent: Agent) -> None:
        e.spec = agent.spec
        awake = max(1, len(agent.replicas) or e.decider.policy.awake)
        was = e.decider
        e.decider = Decider(policy_of(agent.spec, awake))
        e.decider.changed = was.changed  # its windows start afresh, not its last change

    # -- changes ----------------------------------------------------------------------------
    def wake(self, name: str) -> None:
        """A task waits for an agent with no replica: start one now, not at the tick."""
        e = self.entries.get(name)
        agent = self.agents.get(name)
        # (replacing: scaled to 0 by hand, draining; its tick wakes it after)
        if e is None or agent is None or e.applying or agent.replicas or agent.replacing:
            return
        load = self._queued(name, agent)
        if not load:
            # none, or held by a budget (whose timer pumps them, and so wakes it, when
            # they may go): a wake now would go back to sleep, and wake again, and...
            return
        now = time.monotonic()
        e.last_work = now
        self._apply(agent, e, 0, e.decider.decide(now, load, 0, 0.0))

    def _queued(self, name: str, agent: Agent) -> int:
        """The agent's tasks waiting (here, and its share of the cluster's), as load: 0
        while a budget holds them, and not those waiting for their session's turn (more
        replicas would not start them)."""
        queued = (self.tasks.queue.depth(name) - self.tasks.sessions.parked(name)
                  + self.backlog.get(name, 0))
        budgets = self.tasks.dispatch.budgets
        if queued and budgets is not None and budgets.holds(agent):
            return 0
        return queued

    def _apply(self, agent: Agent, e: ElasticEntry, current: int, d: ScaleDecision) -> None:
        e.applying = True
        kept(self._changes, asyncio.ensure_future(self._change(agent, e, current, d)))

    async def _change(self, agent: Agent, e: ElasticEntry, current: int,
                      d: ScaleDecision) -> None:
        up = d.desired > current
        direction = ("wake" if current == 0 else "up") if up else (
            "sleep" if d.desired == 0 else "down")
        reason = d.reason
        target = d.desired
        try:
            if up:
                for room, bound in self._bounds(agent):  # as far as each allows
                    if current + room < target:
                        target = max(current, current + room)
                        reason += f"; held at {target} by {bound}"
                if target == current:
                    direction = "held"
                reached = await agent.scale(target) if target > current else current
            else:
                hibernate = self._hibernate if d.hibernate else None
                reached = await agent.scale(d.desired, idle_only=True,
                                            reason=f"autoscale: {reason}",
                                            before_stop=hibernate)
                if d.hibernate and reached == 0:
                    direction = "hibernate"
        except RpcError as exc:  # over the fleet's max_replicas: held where it is
            reached, direction = len(agent.replicas), "held"
            reason = f"{reason}; not applied: {exc.message}"
        except Exception as exc:  # pragma: no cover - a bug: logged, the loop goes on
            log.exception("autoscaling %s failed", agent.name)
            reached, direction, reason = len(agent.replicas), "held", f"{reason}; {exc}"
        finally:
            e.applying = False
        e.count = reached
        e.state = ASLEEP if reached == 0 else AWAKE
        last = e.last
        # a hold is told once (not every tick while the fleet is full)
        if reached != current or (direction == "held" and not (
                last is not None and last.direction == "held" and last.replicas == current
                and last.desired == d.desired)):
            self._tell(Scaling(time.time(), agent.name, current, reached, d.desired,
                               direction, reason))
        if reached == 0 and direction != "held" and self.tasks.queue.depth(agent.name):
            self.wake(agent.name)  # a task came while it went to sleep

    def _bounds(self, agent: Agent) -> list[tuple[int, str]]:
        """The replicas the agent may still add under each bound on the fleet's count,
        and the bound."""
        used = sum(len(a.replicas) for a in self.agents.values())
        most = self.tuning.max_replicas
        out = [(most - used, f"max_replicas = {most} (a [supervisor] setting)")]
        quota = self.tenancy.replica_room(agent.spec.tenant)
        if quota is not None:
            out.append((quota[0], f"tenant {agent.spec.tenant}'s max_replicas = {quota[1]}"))
        return out

    async def _hibernate(self, gone: list[Replica]) -> None:
        await asyncio.gather(*(self._ask_hibernate(r) for r in gone))

    async def _ask_hibernate(self, r: Replica) -> None:
        if r.peer is None or not r.machine.takes_work:
            return
        timeout = r.spec.stop_timeout
        try:
            await r.peer.request("hibernate", {}, timeout=timeout)
        except RpcError as exc:
            why = (f"did not answer hibernate within {timeout:g} s"
                   if exc.code == jsonrpc.REQUEST_TIMEOUT else f"hibernate failed ({exc.message})")
            r.note(f"{why}: stopped anyway, its state as last checkpointed")

    def _tell(self, s: Scaling) -> None:
        e = self.entries.get(s.agent)
        if e is not None:
            e.last = s
        self.decisions.setdefault(s.agent, deque(maxlen=KEPT_DECISIONS)).append(s)
        key = (s.agent, s.direction)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.stream.emit(s)


def scale_refusal(spec: AgentSpec, n: int) -> str | None:
    """Why `corral scale` may not set an autoscaled agent to `n` replicas, or None: within
    [min_replicas, max_replicas] it sets the count now (the autoscaler goes on from it)."""
    a = spec.autoscale
    if a is None or a.min_replicas <= n <= a.max_replicas:
        return None
    return (f"{spec.name} autoscales between min_replicas {a.min_replicas} and max_replicas "
            f"{a.max_replicas}: {n} is outside them (change [agents.{spec.name}.autoscale] "
            "to go further)")
