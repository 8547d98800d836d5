"""The agents of the engine, as services are given them: add, remove, start, stop,
scale, pause and resume, each refused before any work is done when the fleet's
max_replicas or a tenant's quota would be passed. Reads as a mapping of name -> Agent
(over the registry core.Supervisor keeps)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import (
    Callable,
    Collection,
    ItemsView,
    Iterable,
    Iterator,
    Mapping,
    ValuesView,
)
from typing import TYPE_CHECKING

from .. import jsonrpc
from ..text import plural
from . import startorder
from .agent import Agent
from .config import AgentSpec, ConfigError
from .configload import elastic_problem, protocol_problem
from .elastic import Elastic, scale_refusal
from .errors import NoSuchAgent, SupervisorError
from .health import HealthBoard
from .lifecycle import RESTARTED, STOPPED_BY_HAND, State
from .names import name_problem, shown
from .pausing import selected, to_pause, to_resume
from .process_replica import ReplicaStatus, ResumeFailed
from .quotas import Tenancy
from .replica import Replica
from .stream import Roster, Stream
from .tuning import Tuning
from .waits import Waits

if TYPE_CHECKING:
    from .egressdoors import Doors
    from .tasks import TaskManager


class Agents(Mapping[str, Agent]):
    def __init__(self, registry: dict[str, Agent], *,
                 new_replica: Callable[[AgentSpec, str, int], Replica], census: Counter[State],
                 stream: Stream, waits: Waits, tasks: TaskManager, elastic: Elastic,
                 health: HealthBoard, tenancy: Tenancy, tuning: Tuning,
                 doors: Doors | None = None) -> None:
        self._agents = registry
        self.doors = doors  # the namespaces the daemon holds for replicas (egressdoors.py)
        # what each Agent asks (agent.AgentOwner), besides the methods below
        self.new_replica = new_replica
        self.healthy = waits.healthy
        self.pump = tasks.pump
        self.wait_for = waits.wait_for
        self.census = census  # agent replicas by state (core.Supervisor keeps it)
        self.stream = stream
        self.waits = waits
        self.tasks = tasks
        self.elastic = elastic
        self.health = health
        self.tenancy = tenancy
        self.tuning = tuning

    # -- the mapping, at a dict's speed (dispatch and the loops read it per task) ----------
    def __getitem__(self, name: str) -> Agent:
        return self._agents[name]

    def get(self, name: str) -> Agent | None:  # type: ignore[override]  # (Mapping's: two calls more)
        return self._agents.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._agents)

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def values(self) -> ValuesView[Agent]:
        return self._agents.values()

    def items(self) -> ItemsView[str, Agent]:
        return self._agents.items()

    # -- the API --------------------------------------------------------------------------
    def add(self, spec: AgentSpec, *, start: bool | None = None,
            held: Collection[int] = ()) -> Agent:
        """Add an agent; starts it when `start` (default: its `autostart`). `held`: the
        replicas an operator's stop holds down (kept across a daemon's restart): added
        stopped, and not started until an operator starts them."""
        problem = name_problem(spec.name)
        if problem:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, f"agent {shown(spec.name)}: {problem}")
        if spec.name in self._agents:
            raise SupervisorError(jsonrpc.CONFLICT, f"agent {spec.name} already exists")
        try:
            spec.argv()
            spec.check_health()
        except ConfigError as exc:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, f"agent {spec.name}: {exc}") from None
        problem = elastic_problem(spec) or protocol_problem(spec)
        if problem:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, f"agent {spec.name}: {problem}")
        self.check_room({spec.name: (spec.tenant, spec.replicas)}, f"agent {spec.name}",
                        f"adding {spec.name}")
        agent = Agent(self, spec)
        for r in agent.replicas:
            if r.index in held:
                r.begin_stop(STOPPED_BY_HAND, graceful=True)
        self._agents[spec.name] = agent
        self.elastic.track(agent)
        self.stream.emit(Roster(spec.name))
        if spec.autostart if start is None else start:
            agent.start(held=frozenset(held))
        self.waits.look()  # an agent whose start waits for this one may go now
        return agent

    def agent(self, name: str) -> Agent:
        try:
            return self._agents[name]
        except KeyError:
            raise NoSuchAgent(name, self._agents) from None

    async def remove(self, name: str) -> None:
        agent = self.agent(name)
        self.tasks.forget_agent(name)
        self.elastic.forget(name)
        await agent.stop("removed")
        self.health.forget(name)
        if self.doors is not None:  # its namespaces, and what watched them, with it
            for r in agent.replicas:
                self.doors.forget(r.label)
        if self._agents.pop(name, None) is agent:
            self.forget(agent.replicas)
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
            raise SupervisorError(jsonrpc.CONFLICT, why)  # the agent's bounds: a 409
        await agent.scale(replicas)  # refuses more than max_replicas

    async def pause(self, name: str, index: int | None = None, reason: str = "paused"
                    ) -> list[Replica]:
        """Freeze an agent's replicas (or replica `index`) where they are. Refused (nothing
        done) when one named is not running. Returns the replicas named."""
        agent = self.agent(name)
        await asyncio.gather(*(r.pause(reason, agent.spec.pause_timeout)
                               for r in to_pause(agent, index)))
        return selected(agent, index)

    def resume(self, name: str, index: int | None = None, reason: str = "resumed"
               ) -> list[Replica]:
        """Let paused replicas run on, each back in the state it was paused in. Returns
        the replicas named."""
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
        total = sum(len(a.replicas) for n, a in self._agents.items() if n not in replicas)
        total += sum(replicas.values())
        if total > self.tuning.max_replicas:
            raise SupervisorError(
                jsonrpc.INVALID_PARAMS,
                f"{what} would make {plural(total, 'replica')} in all, over max_replicas = "
                f"{self.tuning.max_replicas} (a [supervisor] setting)")

    def check_tenants(self, want: dict[str, tuple[str, int]], what: str) -> None:
        """Refuse, before any work is done, to give agents (name -> (tenant, replicas))
        more than their tenants' quotas allow (quotas.py); an unknown tenant too."""
        why = self.tenancy.refusal(want, what)
        if why is not None:
            code = jsonrpc.QUOTA_EXCEEDED if all(self.tenancy.known(t)
                                                 for t, _ in want.values()) \
                else jsonrpc.INVALID_PARAMS
            raise SupervisorError(code, why)

    def replicas(self, name: str | None = None) -> Iterable[Replica]:
        agents = [self.agent(name)] if name is not None else list(self._agents.values())
        for a in agents:
            yield from a.replicas

    def status(self, name: str | None = None) -> list[ReplicaStatus]:
        return [r.status() for r in self.replicas(name)]

    def check_room(self, want: dict[str, tuple[str, int]], fleet_what: str,
                   tenant_what: str) -> None:
        self.check_fleet({n: count for n, (_, count) in want.items()}, fleet_what)
        self.check_tenants(want, tenant_what)

    def rolling(self) -> list[Replica]:
        """The processes of rollouts under way; the starts still due are cancelled (the
        supervisor is closing)."""
        for a in self._agents.values():
            if a._starter is not None:
                a._starter.cancel()
        return [r for a in self._agents.values() for r in a.replacing]

    # -- what each Agent asks (agent.AgentOwner) -----------------------------------------
    def roster_changed(self, name: str) -> None:
        self.stream.emit(Roster(name))

    def forget(self, replicas: Iterable[Replica]) -> None:
        for r in replicas:
            self.census[r.state] -= 1
            if self.doors is not None and not self._labelled(r):
                # a replica gone for good (a scale-down's): its namespace and listeners
                # go with it, not when a replica of its label comes again, which under
                # new names never does
                self.doors.forget(r.label)

    def _labelled(self, r: Replica) -> bool:
        """Whether a replica of the agent still bears `r`'s label (a rollout's new
        process takes its old one's place, and its namespace)."""
        agent = self._agents.get(r.name)
        return agent is not None and any(x.label == r.label and x is not r
                                         for x in (*agent.replicas, *agent.replacing))

    def up(self, names: Iterable[str]) -> bool:
        # one not there yet is waited for: a config's agents are added one by one
        return all(a is not None and a.waiting is None and startorder.up(a.replicas)
                   for a in (self._agents.get(n) for n in names))

    def serving(self, names: Iterable[str]) -> bool:
        return all(a is not None and a.waiting is None and startorder.up(a.replicas)
                   and any(r.machine.takes_work for r in a.replicas)
                   for a in (self._agents.get(n) for n in names))

    def failed(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if (a := self._agents.get(n)) is not None
                and startorder.failed_for_good(a.replicas)]

    def stopped_by_hand(self, names: Iterable[str]) -> list[str]:
        """Those of the agents named that an operator stopped: every replica down until
        one starts it (an agent not there is none of them)."""
        return [n for n in names if (a := self._agents.get(n)) is not None and a.replicas
                and all(r.machine.stopped_by_hand and r.machine.stays_down
                        for r in a.replicas)]

    def stop_layers(self) -> list[list[Replica]]:
        """Every agent's replicas in the order a stop of all takes them (`after` in
        reverse, startorder.py), the processes of rollouts under way first."""
        layers = startorder.stop_layers({n: a.spec for n, a in self._agents.items()})
        out = [[r for n in layer for r in self._agents[n].replicas] for layer in layers]
        rolling = self.rolling()
        return [rolling + out[0], *out[1:]] if out else [rolling]
